"""Per-key limits and cost accounting (DESIGN §2 steps 3 and 7, §4): the relay's default `Admission` and
one of its `Finalizer`s.

Admission: one DynamoDB TransactWriteItems before the upstream call (see limits.py for the algorithm and
dynamo/limits_store.py for the writes). A refusal answers 429 with `Retry-After` and the `x-ratelimit-*` headers,
and is recorded as a usage record. A refused write is retried only when its ALL_OLD items show it could
succeed (a stale cached previous minute, expired leases to take over) or on transaction contention.
If DynamoDB is unreachable or keeps throttling: 503 (fail closed) unless `RELAY_ADMISSION_FAIL_OPEN`.

Finalization: one TransactWriteItems before the response body closes: the usage record, the day's and
month's spend, the lease release and the token settlement. Retried; if it still fails, the record is logged
in full (structured, no secrets) so it is never lost silently; the stream is never broken by it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import anyio
import anyio.to_thread

from . import metrics
from .admission import Ticket
from .dynamo import Settlement, Stores, request_item
from .errors import RateLimited, ServiceUnavailable, StoreUnavailable
from .limits import (
    RATE,
    AdmissionPlan,
    Limits,
    Refusal,
    Window,
    judge,
    lease_attr,
    rate_headers,
    refusal,
    refusal_message,
    reserve_tokens,
    retry_after_s,
)
from .metering import estimate_prompt_tokens
from .outcome import RequestContext, StreamOutcome
from .settings import Settings
from .usage import record_for, refused_record

logger = logging.getLogger(__name__)

MetricHook = Callable[[str, float, Mapping[str, str]], None]

# Metric names this module reports through its hook (names and dimensions are declared in metrics.py).
METRIC_REJECTED = metrics.ADMISSION_REJECTED  # dimension: limit (rpm, tpm, max_concurrent, daily/monthly budget)
METRIC_STORE_ERROR = metrics.ADMISSION_STORE_ERROR  # dimension: policy (fail_closed, fail_open)
METRIC_USAGE_WRITE_FAILED = metrics.USAGE_WRITE_FAILED
METRIC_ADMISSION_ATTEMPTS = metrics.ADMISSION_ATTEMPTS

MAX_ATTEMPTS = 6


def default_limits(settings: Settings) -> Limits:
    return Limits(
        rpm=settings.default_rpm,
        tpm=settings.default_tpm,
        max_concurrent=settings.default_max_concurrent,
        daily_budget_usd=settings.default_daily_budget_usd,
        monthly_budget_usd=settings.default_monthly_budget_usd,
    )


@dataclass(slots=True)
class _Seen:
    """Lower bounds of one key's counters in one minute: observed in ALL_OLD items, or written by us."""

    requests: int = 0
    tokens: int = 0
    own_requests: int = 0
    own_tokens: int = 0

    @property
    def low_requests(self) -> int:
        return max(self.requests, self.own_requests)

    @property
    def low_tokens(self) -> int:
        return max(self.tokens, self.own_tokens)


class Limiter:
    def __init__(
        self,
        stores: Stores,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        metrics: MetricHook | None = None,
    ) -> None:
        self._stores = stores
        self._settings = settings
        self._defaults = default_limits(settings)
        self._clock = clock
        self._metrics = metrics
        self._seen: dict[tuple[str, int], _Seen] = {}
        self._pruned_at = 0

    def limits_for(self, overrides: Mapping[str, Any]) -> Limits:
        return Limits.resolve(overrides, self._defaults)

    # --- admission -----------------------------------------------------------------------------------------
    async def admit(self, ctx: RequestContext) -> Ticket:
        limits = self.limits_for(ctx.key.limits)
        item = request_item(
            ctx.request_id, ctx.key.key_id, ctx.chat.model, self._settings.request_ttl_s, ctx.client_request_id
        )
        if limits.unlimited:
            try:
                await anyio.to_thread.run_sync(self._stores.requests.put, item)
            except StoreUnavailable as exc:
                return self._store_down(ctx, exc)
            return Ticket()
        plan = self._plan(ctx, limits)
        blocked = plan.blocked()
        if blocked:
            seen = self._seen_at(ctx.key.key_id, plan.window.minute)
            await self._refuse(ctx, plan, refusal(plan, blocked, seen.low_requests, seen.low_tokens))
        for attempt in range(MAX_ATTEMPTS):
            try:
                result = await anyio.to_thread.run_sync(self._stores.limits.admit, plan, item, attempt)
            except StoreUnavailable as exc:
                return self._store_down(ctx, exc)
            if result.admitted:
                self._metric(METRIC_ADMISSION_ATTEMPTS, attempt + 1, {})
                return self._admitted(ctx, plan)
            if result.failures:
                self._learn(plan, result.failures)
                verdict = judge(plan, result.failures)
                if isinstance(verdict, Refusal):
                    await self._refuse(ctx, plan, verdict)
                plan = verdict
            else:
                await anyio.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
        return self._store_down(ctx, StoreUnavailable("admission kept conflicting with other writes"))

    def _plan(self, ctx: RequestContext, limits: Limits) -> AdmissionPlan:
        now = self._clock()
        prev = self._seen_at(ctx.key.key_id, Window.at(now).minute - 1)
        chat = ctx.chat
        reserve = reserve_tokens(
            estimate_prompt_tokens(chat.messages_as_dicts()), chat.max_completion_tokens or chat.max_tokens, chat.n
        )
        return AdmissionPlan(
            ctx.request_id,
            ctx.key.key_id,
            limits,
            now,
            reserve,
            self._settings.function_timeout_s,
            prev.low_requests,
            prev.low_tokens,
        )

    def _admitted(self, ctx: RequestContext, plan: AdmissionPlan) -> Ticket:
        window = plan.window
        seen = self._seen_at(plan.key_id, window.minute)
        seen.own_requests += 1
        seen.own_tokens += plan.reserve
        limits = plan.limits
        return Ticket(
            headers=self._headers(plan, seen.low_requests, seen.low_tokens),
            minute=window.minute,
            reserve=plan.reserve,
            lease=lease_attr(ctx.request_id) if limits.max_concurrent is not None else None,
            settle_tokens=limits.tpm is not None,
        )

    def _headers(self, plan: AdmissionPlan, cur_requests: int, cur_tokens: int) -> dict[str, str]:
        headers: dict[str, str] = {}
        e = plan.window.elapsed_ms
        if plan.limits.rpm is not None:
            headers.update(rate_headers("requests", plan.limits.rpm, cur_requests, plan.prev_requests, e))
        if plan.limits.tpm is not None:
            headers.update(rate_headers("tokens", plan.limits.tpm, cur_tokens, plan.prev_tokens, e))
        return headers

    async def _refuse(self, ctx: RequestContext, plan: AdmissionPlan, refused: Refusal) -> NoReturn:
        """Answer 429 (after recording the refused request); never returns."""
        seen = self._seen_at(plan.key_id, plan.window.minute)
        cur_r = refused.cur_requests if refused.cur_requests is not None else seen.low_requests
        cur_t = refused.cur_tokens if refused.cur_tokens is not None else seen.low_tokens
        fixed = replace(plan, prev_requests=refused.prev_requests, prev_tokens=refused.prev_tokens)
        error = RateLimited(refusal_message(refused, plan.limits, plan.reserve), code=refused.code)
        error.rejection = "budget_exceeded" if refused.code == "budget_exceeded" else "rate_limited"
        error.headers.update(self._headers(fixed, max(cur_r, seen.low_requests), max(cur_t, seen.low_tokens)))
        if refused.retry_after_ms is not None:
            error.headers["retry-after"] = str(retry_after_s(refused.retry_after_ms))
            error.headers["retry-after-ms"] = str(refused.retry_after_ms)
        for name in refused.limits:
            self._metric(METRIC_REJECTED, 1, {"limit": name})
        logger.info("request %s of key %s refused by %s", ctx.request_id, ctx.key.key_id, ",".join(refused.limits))
        record = refused_record(ctx, refused.code, time.monotonic() - ctx.started_at)
        try:
            await anyio.to_thread.run_sync(self._stores.usage.put_refused, record, self._settings.usage_retention_days)
        except StoreUnavailable as exc:
            self._lost(record.as_json(), exc)
        raise error

    def _store_down(self, ctx: RequestContext, exc: StoreUnavailable) -> Ticket:
        if self._settings.admission_fail_open:
            logger.error(
                "ADMISSION FAIL-OPEN: limits store unavailable (%s); request %s of key %s admitted WITHOUT limits",
                exc,
                ctx.request_id,
                ctx.key.key_id,
            )
            self._metric(METRIC_STORE_ERROR, 1, {"policy": "fail_open"})
            return Ticket()
        logger.error(
            "admission refused (fail closed): limits store unavailable (%s); request %s of key %s",
            exc,
            ctx.request_id,
            ctx.key.key_id,
        )
        self._metric(METRIC_STORE_ERROR, 1, {"policy": "fail_closed"})
        error = ServiceUnavailable(
            "Rate limiting is temporarily unavailable (state store unreachable); try again shortly."
        )
        error.headers["retry-after"] = "1"
        raise error from exc

    # --- finalization --------------------------------------------------------------------------------------
    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        ticket = ctx.ticket
        record = record_for(ctx, outcome)
        settlement = Settlement(record, self._settings.usage_retention_days)
        if ticket is not None:
            settlement = self._settlement(ticket, outcome, settlement)
        try:
            await anyio.to_thread.run_sync(self._stores.limits.settle, settlement)
        except StoreUnavailable as exc:
            self._lost(record.as_json(), exc)
            return
        if settlement.tokens_minute is not None and settlement.tokens_delta:
            self._seen_at(ctx.key.key_id, settlement.tokens_minute).own_tokens += settlement.tokens_delta

    def _settlement(self, ticket: Ticket, outcome: StreamOutcome, base: Settlement) -> Settlement:
        """Give the lease back; book the difference between reserved and used tokens to the minute the
        request was admitted in, or (a refund is dropped then) to the current minute once that one is over."""
        delta, minute = 0, None
        if ticket.settle_tokens and ticket.minute is not None:
            delta = outcome.usage.total_tokens - ticket.reserve
            minute = Window.at(self._clock()).minute
            if minute != ticket.minute:
                delta = max(0, delta)
            else:
                minute = ticket.minute
        return Settlement(base.record, base.retention_days, ticket.lease, delta, minute)

    def _lost(self, record: dict[str, Any], exc: Exception) -> None:
        """A usage record DynamoDB would not take: logged whole, to be replayed from the logs."""
        self._metric(METRIC_USAGE_WRITE_FAILED, 1, {})
        logger.error("USAGE RECORD NOT WRITTEN (%s); record follows for replay", exc, extra={"usage_record": record})

    # --- in-process knowledge of the counters --------------------------------------------------------------
    def _seen_at(self, key_id: str, minute: int) -> _Seen:
        seen = self._seen.get((key_id, minute))
        if seen is None:
            if minute > self._pruned_at:
                self._prune(minute)
            seen = self._seen[(key_id, minute)] = _Seen()
        return seen

    def _learn(self, plan: AdmissionPlan, failures: Mapping[str, Mapping[str, Any] | None]) -> None:
        minute = plan.window.minute
        for part, at in ((RATE, minute), ("prev", minute - 1)):
            old = failures.get(part)
            if old:
                seen = self._seen_at(plan.key_id, at)
                seen.requests = max(seen.requests, int(old.get("requests", 0)))
                seen.tokens = max(seen.tokens, int(old.get("tokens", 0)))

    def _prune(self, minute: int) -> None:
        """Forget minutes that no longer weigh on any window: memory stays flat however many streams run."""
        self._pruned_at = minute
        for key in [k for k in self._seen if k[1] < minute - 2]:
            del self._seen[key]

    def _metric(self, name: str, value: float, dimensions: Mapping[str, str]) -> None:
        if self._metrics is not None:
            try:
                self._metrics(name, value, dimensions)
            except Exception:
                logger.exception("metric hook failed")

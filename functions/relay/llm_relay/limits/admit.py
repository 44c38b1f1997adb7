"""Admission (docs/design.md, "Admission in one DynamoDB transaction"): one DynamoDB TransactWriteItems before the
upstream call, which also registers the in-flight request (so the explicit cancel can find it). See rules.py for
the algorithm and dynamo/limits_store.py for the writes.

A refusal answers 429 with `Retry-After` and the `x-ratelimit-*` headers, and is recorded as a usage record. A
refused write is retried only when its ALL_OLD items show it could succeed (a stale cached previous minute; expired
leases, once the reconciler settled them) or on contention. If DynamoDB is unreachable or keeps throttling: 503
(fail closed) unless `RELAY_ADMISSION_FAIL_OPEN`.

Every DynamoDB wait is bounded (docs/design.md, "The ledger loses nothing"): admission gives up after
`RELAY_ADMISSION_TIMEOUT_S`, gives back what the admission may have taken (idempotent, by request id; in the background
if DynamoDB still does not answer) and answers 503. A concurrency refusal reads the key's earliest lease (one small
Query on the sparse `leases` index): expired leases are settled as `lost` on the spot (by the injected reconciler)
and the admission retried; otherwise Retry-After is 2 s while a holder renews its lease (a live stream may end at any
moment), and the earliest expiry once none does.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any, NoReturn, Protocol

import anyio
from aws_lambda_powertools import Logger

from .. import attribution
from ..dynamo import Stores, layout, request_item
from ..dynamo.limits_store import REQUEST
from ..dynamo.store_base import backoff, throttled_backoff
from ..errors import ModelNotPriced, RateLimited, ServiceUnavailable, StoreUnavailable
from ..outcome import RequestContext, Ticket
from ..pricing import Pricer, highest
from ..settings import Settings
from ..usage import UsageRecord, refused_record
from .budgets import Reservation, periods_of
from .reporting import LimitsMetrics, bounded, record_not_written, write_later
from .rules import (
    CONCURRENCY,
    DAILY,
    MONTHLY,
    RATE,
    AdmissionPlan,
    Limits,
    Refusal,
    Window,
    concurrency_wait_ms,
    counter_id,
    default_limits,
    judge,
    lease_attr,
    rate_headers,
    refusal,
    refusal_message,
    reserve_tokens,
    retry_after_s,
    scaled_headers,
)
from .seen import SeenCounters

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
RELEASE_BUDGET_S = 0.5  # of the admission timeout, kept for giving back what a timed-out admission took


class SettlesExpired(Protocol):
    """What settles requests whose lease expired as `lost` (`reconciler.Reconciler`)."""

    def settle(self, request_ids: Iterable[str], now: float | None = None) -> list[UsageRecord | None]: ...


class Admitter:
    def __init__(
        self,
        stores: Stores,
        settings: Settings,
        *,
        seen: SeenCounters,
        pricer: Pricer,
        reconciler: SettlesExpired,
        metrics: LimitsMetrics,
        log: Logger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stores = stores
        self._settings = settings
        self._defaults = default_limits(settings)
        self._seen = seen
        self._pricer = pricer
        self._reconciler = reconciler
        self._metrics = metrics
        self._log = log
        self._clock = clock

    def limits_for(self, overrides: Mapping[str, Any]) -> Limits:
        return Limits.resolve(overrides, self._defaults)

    async def admit(self, ctx: RequestContext) -> Ticket:
        limits = self.limits_for(ctx.key.limits)
        reservation = self._reservation(ctx, limits)
        shards = _shards_to_try(ctx.request_id, limits)
        plan = self._plan(ctx, limits, reservation, shards[0])
        deadline = time.monotonic() + self._settings.admission_timeout_s
        if limits.unlimited:
            item = self._item(ctx, plan, Ticket(), None)
            try:
                await bounded(self._stores.requests.put, item, until=deadline - RELEASE_BUDGET_S)
            except StoreUnavailable as exc:
                given_back = not exc.outcome_unknown or await self._release(plan, item, deadline)
                return self._store_down(ctx, exc, nothing_held=given_back)
            return Ticket()
        refused: tuple[AdmissionPlan, Refusal] | None = None
        for shard in shards:
            if shard != plan.shard:
                plan = self._plan(ctx, limits, reservation, shard)
            outcome = await self._admit_on(ctx, plan, reservation, deadline, limits)
            if isinstance(outcome, Ticket):
                return outcome
            refused = (plan, outcome)
        assert refused is not None
        await self._refuse(ctx, *refused, limits)

    async def _admit_on(
        self,
        ctx: RequestContext,
        plan: AdmissionPlan,
        reservation: Reservation | None,
        deadline: float,
        limits: Limits,
    ) -> Ticket | Refusal:
        """Admission on the plan's shard (`limits`: the key's, whole): the ticket, or the refusal (nothing taken)."""
        blocked = plan.blocked()
        if blocked:
            seen = self._seen.at(plan.counter_id, plan.window.minute)
            return refusal(plan, blocked, seen.low_requests, seen.low_tokens)
        reclaimed = refilled = False
        conflicts = 0  # attempts that met anything but a throttled partition: at most MAX_ATTEMPTS
        for attempt in itertools.count():
            if conflicts >= MAX_ATTEMPTS:
                break
            item = self._item(ctx, plan, _grant(plan), reservation)
            try:
                admit = functools.partial(self._stores.limits.admit, plan, item, attempt)
                result = await bounded(admit, until=deadline - RELEASE_BUDGET_S)
            except StoreUnavailable as exc:
                given_back = not exc.outcome_unknown or await self._release(plan, item, deadline)
                return self._store_down(ctx, exc, nothing_held=given_back)
            if result.admitted:
                self._metrics.admission_attempts(attempt + 1)
                return self._admitted(plan, reservation, limits)
            if REQUEST in result.failures:  # released meanwhile (an earlier attempt's outcome was unknown)
                return self._store_down(ctx, StoreUnavailable("the request was released during its admission"))
            conflicts += 1
            failures = result.failures
            short = {part: failures[part] for part in (DAILY, MONTHLY) if part in failures} if plan.shard else {}
            if short and not refilled:
                # a shard's headroom could not cover the reservation: judged on the other parts first (a stale
                # previous minute, a rate or slot refusal are not the budget's), then a block from the bank, once
                failures = {part: old for part, old in failures.items() if part not in short}
                if failures:
                    self._learn(plan, failures)
                    verdict = judge(plan, failures)
                    if isinstance(verdict, Refusal):
                        return verdict
                    plan = verdict
                refilled = True
                given = await self._refill(ctx, plan, short, deadline)
                if isinstance(given, Ticket):
                    return given  # DynamoDB did not answer and the deployment fails open
                if given:
                    continue
                failures = short  # the bank has no room: the budget refuses
            if failures:
                self._learn(plan, failures)
                verdict = judge(plan, failures)
                if isinstance(verdict, Refusal) and CONCURRENCY in failures and not reclaimed:
                    reclaimed = True
                    waited = await self._expired_or_wait(plan, verdict, deadline)
                    if waited is None:
                        continue  # expired leases were settled: their slots are free again
                    verdict = waited
                if isinstance(verdict, Refusal):
                    return verdict
                plan = verdict
            else:
                # A throttled partition takes writes again in its next second: retried until the admission's time is
                # up, not given up after a few conflicts' worth of milliseconds.
                if result.throttled:
                    conflicts -= 1
                pause = throttled_backoff(attempt) if result.throttled else backoff(attempt)
                if result.throttled and time.monotonic() + pause >= deadline - RELEASE_BUDGET_S:
                    return self._store_down(ctx, StoreUnavailable("DynamoDB kept throttling the key's items"))
                await anyio.sleep(pause)
        return self._store_down(ctx, StoreUnavailable("admission kept conflicting with other writes"))

    def _item(
        self, ctx: RequestContext, plan: AdmissionPlan, ticket: Ticket, reservation: Reservation | None
    ) -> dict[str, Any]:
        settings = self._settings
        base = request_item(
            ctx.request_id, ctx.key.key_id, ctx.chat.model, settings.request_ttl_s, ctx.client_request_id
        )
        if reservation is not None:
            base["reserved_usd"] = reservation.usd  # what a reconciler releases if this request never finalizes
        if ctx.billed_as and ctx.billed_as[0] != ctx.chat.model:
            base["billed_as"] = ctx.billed_as[0]  # the first route's model: what a lost request is priced as
        base.update(attribution.as_item(ctx.attribution))  # so a request settled as `lost` keeps its user and tags
        if ctx.api != "chat":
            base["api"] = ctx.api  # ... and the API it was asked in
        return layout.admitted_item(
            base,
            lease_until=plan.lease_expiry,
            started_epoch=ctx.started_epoch,
            mode=ctx.mode,
            prompt_tokens=ctx.prompt.estimate,
            ticket=ticket,
        )

    async def _refill(
        self, ctx: RequestContext, plan: AdmissionPlan, failed: Mapping[str, Any], deadline: float
    ) -> bool | Ticket:
        """Blocks from the bank for the shard's spend items whose headroom refused the reservation (each as it was,
        from the refused write): True when every one was given (the admission is tried again), False when a budget
        has no room left (a refusal). DynamoDB not answering is a 503 (or, failing open, the request admitted without
        limits: its `Ticket`), as for the admission itself; a block given all the same only leaves the shard headroom
        for later."""
        for period in periods_of(plan.limits, plan.spend_at, plan.shard, plan.shards):
            part = DAILY if period.limit == "daily_budget_usd" else MONTHLY
            if part not in failed or period.budget is None:
                continue
            headroom = Decimal(str((failed[part] or {}).get("headroom_usd", 0)))
            refill = functools.partial(
                self._stores.budgets.refill, plan.key_id, plan.request_id, period, plan.reserve_usd, headroom
            )
            try:
                if not await bounded(refill, until=deadline - RELEASE_BUDGET_S):
                    return False
            except StoreUnavailable as exc:
                return self._store_down(ctx, exc)  # nothing of this request is held yet
        return True

    async def _release(self, plan: AdmissionPlan, item: dict[str, Any], deadline: float) -> bool:
        """Give back what an admission of unknown outcome may have taken, before the 503 if DynamoDB answers in
        time, else from a background thread (idempotent either way). True when it is given back now."""
        expires = int(item["expires_at"])
        try:
            outcome = await bounded(self._stores.limits.release_unknown, plan, expires, until=deadline)
        except StoreUnavailable:
            write_later(
                f"release the admission of {plan.request_id}",
                functools.partial(self._stores.limits.release_unknown, plan, expires),
                lambda outcome: logger.info("admission of %s released later: %s", plan.request_id, outcome),
                "the reconciler settles it",
            )
            return False
        logger.info("admission of %s of unknown outcome released: %s", plan.request_id, outcome)
        return True

    async def _expired_or_wait(self, plan: AdmissionPlan, refused: Refusal, deadline: float) -> Refusal | None:
        """A concurrency refusal: the key's earliest leases (one small Query). Expired ones are settled as `lost`
        (their relay stopped) and None returned, to try again; else the refusal, with Retry-After short while a
        holder renews its lease, and the earliest expiry once none does (`rules.concurrency_wait_ms`)."""
        try:
            holders = layout.lease_key(plan.key_id, plan.shard)  # the shard's own slots refused it
            leases = await bounded(self._stores.requests.earliest_leases, holders, until=deadline)
            now = self._clock()
            expired = [rid for rid, until in leases if until < now]
            if expired and any(await bounded(self._reconciler.settle, expired, until=deadline)):
                return None
        except StoreUnavailable as exc:
            logger.warning("earliest lease of key %s unknown: %s", plan.key_id, exc)
            return refused
        if refused.retry_after_ms is None:
            return refused
        wait = concurrency_wait_ms([until for _, until in leases], now, self._settings.lease_s)
        return replace(refused, retry_after_ms=max(refused.retry_after_ms, wait))

    def _reservation(self, ctx: RequestContext, limits: Limits) -> Reservation | None:
        """The request's first budget reservation (None: the key has no budget). A budgeted key asking for a
        model without a price is refused (400), or with RELAY_UNPRICED_MODELS=allow admitted unbudgeted."""
        periods = periods_of(limits, ctx.started_epoch)  # the usage record's day and month, as settlement's
        if not periods:
            return None
        chat = ctx.chat
        names = list(dict.fromkeys(ctx.billed_as or (chat.model,)))  # the models that may answer (a route, fallbacks)
        prices = [self._pricer.price_of(name) for name in names]
        unpriced = next((name for name, price in zip(names, prices, strict=True) if price is None), None)
        if unpriced is not None:
            if self._settings.unpriced_models == "refuse":
                raise ModelNotPriced(
                    f"The model '{unpriced}' has no price, so this key's budget cannot be enforced on it. "
                    "An operator can add its price (USD per million tokens) with RELAY_PRICES_JSON, e.g. "
                    f'{{"{unpriced}": {{"input": "0.50", "output": "1.50"}}}}; '
                    "`llm-relay prices` lists the known ones.",
                    param="model",
                )
            logger.warning(
                "request %s of key %s: model %r has no price; admitted WITHOUT budget (RELAY_UNPRICED_MODELS=allow)",
                ctx.request_id,
                ctx.key.key_id,
                unpriced,
            )
            return None
        return Reservation.open(
            highest([price for price in prices if price is not None]),
            periods,
            prompt_tokens=ctx.prompt.upper,
            max_tokens=chat.max_completion_tokens or chat.max_tokens,
            increment=self._settings.budget_increment_tokens,
            choices=chat.n,
        )

    def _plan(self, ctx: RequestContext, limits: Limits, reservation: Reservation | None, shard: int) -> AdmissionPlan:
        """The admission of `ctx` on one of the key's shards, with that shard's share of the rate and concurrency
        limits."""
        now = self._clock()
        prev = self._seen.at(counter_id(ctx.key.key_id, shard), Window.at(now).minute - 1)
        chat = ctx.chat
        reserve = reserve_tokens(ctx.prompt.estimate, chat.max_completion_tokens or chat.max_tokens, chat.n)
        return AdmissionPlan(
            ctx.request_id,
            ctx.key.key_id,
            limits.for_shard(shard),
            now,
            reserve,
            self._settings.lease_s,
            prev.low_requests,
            prev.low_tokens,
            reserve_usd=reservation.usd if reservation is not None else Decimal(0),
            spend_epoch=ctx.started_epoch,
            shard=shard,
            shards=limits.shard_count,
        )

    def _admitted(self, plan: AdmissionPlan, reservation: Reservation | None, limits: Limits) -> Ticket:
        if reservation is not None:  # held on the spend items of the shard that admitted it: extended there
            reservation.periods = periods_of(limits, plan.spend_at, plan.shard)
        seen = self._seen.admitted(plan.counter_id, plan.window.minute, plan.reserve)
        headers = scaled_headers(_headers(plan, seen.low_requests, seen.low_tokens), limits)
        return replace(_grant(plan), headers=headers, budget=reservation)

    async def _refuse(self, ctx: RequestContext, plan: AdmissionPlan, refused: Refusal, limits: Limits) -> NoReturn:
        """Answer 429 (after recording the refused request); never returns."""
        seen = self._seen.at(plan.counter_id, plan.window.minute)
        cur_r = refused.cur_requests if refused.cur_requests is not None else seen.low_requests
        cur_t = refused.cur_tokens if refused.cur_tokens is not None else seen.low_tokens
        fixed = replace(plan, prev_requests=refused.prev_requests, prev_tokens=refused.prev_tokens)
        error = RateLimited(refusal_message(refused, plan.limits, plan.reserve, plan.reserve_usd), code=refused.code)
        error.rejection = "budget_exceeded" if refused.code == "budget_exceeded" else "rate_limited"
        headers = _headers(fixed, max(cur_r, seen.low_requests), max(cur_t, seen.low_tokens))
        error.headers.update(scaled_headers(headers, limits))
        if refused.retry_after_ms is not None:
            error.headers["retry-after"] = str(retry_after_s(refused.retry_after_ms))
            error.headers["retry-after-ms"] = str(refused.retry_after_ms)
        for name in refused.limits:
            self._metrics.admission_rejected(name)
        logger.info("request %s of key %s refused by %s", ctx.request_id, ctx.key.key_id, ",".join(refused.limits))
        record = refused_record(ctx, refused.code, time.monotonic() - ctx.started_at)
        try:
            retention = self._settings.usage_retention_days
            put = functools.partial(self._stores.usage.put_refused, record, retention, plan.shard)
            await bounded(put, until=time.monotonic() + self._settings.admission_timeout_s)
        except StoreUnavailable as exc:  # logged whole now, written after the answer (as a settlement would be)
            record_not_written(self._log, self._metrics, record.as_json(), exc)
            write_later(  # written once: a retry that finds it there is done
                f"write the record of refused request {record.request_id}",
                put,
                lambda _: logger.info("record of refused request %s written late", record.request_id),
                "it is in the log",
            )
        raise error

    def _store_down(self, ctx: RequestContext, exc: StoreUnavailable, *, nothing_held: bool = True) -> Ticket:
        """DynamoDB did not decide: 503, or with RELAY_ADMISSION_FAIL_OPEN the request admitted without limits,
        but only once nothing is held for it (an admission of unknown outcome was given back): what a pending
        release and the request's own settlement would both touch could otherwise leak or go unrecorded."""
        if self._settings.admission_fail_open and not nothing_held:
            logger.error("admission of %s: outcome unknown and not yet given back; not failing open", ctx.request_id)
        if self._settings.admission_fail_open and nothing_held:
            logger.error(
                "ADMISSION FAIL-OPEN: limits store unavailable (%s); request %s of key %s admitted WITHOUT limits",
                exc,
                ctx.request_id,
                ctx.key.key_id,
            )
            self._metrics.admission_store_error("fail_open")
            return Ticket()
        logger.error(
            "admission refused (fail closed): limits store unavailable (%s); request %s of key %s",
            exc,
            ctx.request_id,
            ctx.key.key_id,
        )
        self._metrics.admission_store_error("fail_closed")
        error = ServiceUnavailable(
            "Rate limiting is temporarily unavailable (state store unreachable); try again shortly."
        )
        error.headers["retry-after"] = "1"
        raise error from exc

    def _learn(self, plan: AdmissionPlan, failures: Mapping[str, Mapping[str, Any] | None]) -> None:
        minute = plan.window.minute
        self._seen.learn(plan.counter_id, minute, failures.get(RATE))
        self._seen.learn(plan.counter_id, minute - 1, failures.get("prev"))


def _grant(plan: AdmissionPlan) -> Ticket:
    """What admitting `plan` takes (recorded on the request item, so the reconciler can give it back)."""
    limits = plan.limits
    return Ticket(
        minute=plan.window.minute,
        reserve=plan.reserve,
        lease=lease_attr(plan.request_id) if limits.max_concurrent is not None else None,
        settle_tokens=limits.tpm is not None,
        shard=plan.shard,
    )


def _shards_to_try(request_id: str, limits: Limits) -> list[int]:
    """The key's shards a request may take from, in order: the one its id hashes to (the same in every process, so
    requests spread evenly), then the next, since a shard's share can be used up while another's is not. One shard
    for a key without shards."""
    count = limits.shard_count
    if count == 1:
        return [0]
    first = layout.shard_of(request_id, count)
    return [first, (first + 1) % count]


def _headers(plan: AdmissionPlan, cur_requests: int, cur_tokens: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    e = plan.window.elapsed_ms
    if plan.limits.rpm is not None:
        headers.update(rate_headers("requests", plan.limits.rpm, cur_requests, plan.prev_requests, e))
    if plan.limits.tpm is not None:
        headers.update(rate_headers("tokens", plan.limits.tpm, cur_tokens, plan.prev_tokens, e))
    return headers

"""Per-key limits and cost accounting (docs/design.md, "Admission in one DynamoDB transaction"): the relay's default
`Admission` and one of its `Finalizer`s.

Admission: one DynamoDB TransactWriteItems before the upstream call (see limits.py for the algorithm and
dynamo/limits_store.py for the writes). A refusal answers 429 with `Retry-After` and the `x-ratelimit-*` headers,
and is recorded as a usage record. A refused write is retried only when its ALL_OLD items show it could
succeed (a stale cached previous minute; expired leases, once the reconciler settled them) or on contention.
If DynamoDB is unreachable or keeps throttling: 503 (fail closed) unless `RELAY_ADMISSION_FAIL_OPEN`.

Every DynamoDB wait is bounded (docs/design.md, "The ledger loses nothing"): admission gives up after
`RELAY_ADMISSION_TIMEOUT_S`, gives back what the admission may have taken (idempotent, by request id; in the background
if DynamoDB still does not answer) and answers 503. A concurrency refusal reads the key's earliest lease (one small
Query on the sparse `leases` index): expired leases are reconciled on the spot and the admission retried; otherwise
Retry-After is 2 s while a holder renews its lease (a live stream may end at any moment), and the earliest expiry once
none does.

Finalization: one TransactWriteItems before the response body closes: the usage record, the day's and
month's spend, the lease release and the token settlement (`ledger.settlement_of`, shared with the reconciler),
conditional on the request not being finished. Bounded by `RELAY_FINALIZE_TIMEOUT_S`; if it fails, the record is
logged in full as one structured line (Powertools Logger, no secrets), and the same transaction (same client request
token: applied once) is retried from a background thread after the response, until it is written or the reconciler
settled the request as `lost` from its last checkpoint; the stream is never broken by it. A settlement refused because
another party settled the request first (a reconciler, while this process was paused) logs its full record beside
what the ledger holds, and the request's telemetry says what the ledger holds (`telemetry.LedgerNote`).
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, NoReturn, TypeVar

import anyio
import anyio.to_thread
from aws_lambda_powertools import Logger

from . import attribution, metrics
from .admission import Ticket
from .budgets import Reservation, conservative_prompt_tokens, periods_of
from .dynamo import Settlement, Stores, request_item
from .dynamo.limits_store import REQUEST
from .errors import ModelNotPriced, RateLimited, ServiceUnavailable, StoreUnavailable
from .ledger import admitted_item, lost_record, settlement_of
from .limits import (
    CONCURRENCY,
    RATE,
    AdmissionPlan,
    Limits,
    Refusal,
    Window,
    concurrency_wait_ms,
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
from .pricing import ModelPrice, Pricer, PriceTable, highest
from .reconciler import Reconciler
from .settings import Settings
from .telemetry import LedgerNote, Telemetry
from .termination import TerminationReason
from .usage import UsageRecord, record_for, refused_record

T = TypeVar("T")
PriceOf = Callable[[str], ModelPrice | None]

logger = logging.getLogger(__name__)

MetricHook = Callable[[str, float, Mapping[str, str]], None]

# Metric names this module reports through its hook (names and dimensions are declared in metrics.py).
METRIC_REJECTED = metrics.ADMISSION_REJECTED  # dimension: limit (rpm, tpm, max_concurrent, daily/monthly budget)
METRIC_STORE_ERROR = metrics.ADMISSION_STORE_ERROR  # dimension: policy (fail_closed, fail_open)
METRIC_USAGE_WRITE_FAILED = metrics.USAGE_WRITE_FAILED
METRIC_ADMISSION_ATTEMPTS = metrics.ADMISSION_ATTEMPTS
METRIC_BUDGET_EXTENSIONS = metrics.BUDGET_EXTENSIONS  # dimension: result (granted, refused, store_error)

MAX_ATTEMPTS = 6
RELEASE_BUDGET_S = 0.5  # of the admission timeout, kept for giving back what a timed-out admission took
RELEASE_LATER_S = 600.0  # a release DynamoDB would not take in time is retried in the background this long


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
        pricer: Pricer | None = None,
        price_of: PriceOf | None = None,
        log: Logger | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._stores = stores
        self._telemetry = telemetry  # counts the requests this limiter settles as `lost`, hears of refused settlements
        self._price_of = price_of
        self._settings = settings
        self._defaults = default_limits(settings)
        self._clock = clock
        self._metrics = metrics
        self._log = log or Logger(service=settings.service_name, level=settings.log_level)
        self._pricer = pricer = pricer or PriceTable.load(settings.prices_json)
        on_lost = telemetry.settled_lost if telemetry is not None else None
        self._reconciler = Reconciler(stores, pricer, settings.usage_retention_days, clock=clock, on_lost=on_lost)
        self._seen: dict[tuple[str, int], _Seen] = {}
        self._pruned_at = 0

    def limits_for(self, overrides: Mapping[str, Any]) -> Limits:
        return Limits.resolve(overrides, self._defaults)

    # --- admission -----------------------------------------------------------------------------------------
    async def admit(self, ctx: RequestContext) -> Ticket:
        limits = self.limits_for(ctx.key.limits)
        reservation = self._reservation(ctx, limits)
        plan = self._plan(ctx, limits, reservation)
        deadline = time.monotonic() + self._settings.admission_timeout_s
        if limits.unlimited:
            item = self._item(ctx, plan, Ticket(), None)
            try:
                await self._bounded(self._stores.requests.put, item, until=deadline - RELEASE_BUDGET_S)
            except StoreUnavailable as exc:
                given_back = not exc.outcome_unknown or await self._release(plan, item, deadline)
                return self._store_down(ctx, exc, nothing_held=given_back)
            return Ticket()
        blocked = plan.blocked()
        if blocked:
            seen = self._seen_at(ctx.key.key_id, plan.window.minute)
            await self._refuse(ctx, plan, refusal(plan, blocked, seen.low_requests, seen.low_tokens))
        reclaimed = False
        for attempt in range(MAX_ATTEMPTS):
            item = self._item(ctx, plan, self._grant(plan), reservation)
            try:
                admit = functools.partial(self._stores.limits.admit, plan, item, attempt)
                result = await self._bounded(admit, until=deadline - RELEASE_BUDGET_S)
            except StoreUnavailable as exc:
                given_back = not exc.outcome_unknown or await self._release(plan, item, deadline)
                return self._store_down(ctx, exc, nothing_held=given_back)
            if result.admitted:
                self._metric(METRIC_ADMISSION_ATTEMPTS, attempt + 1, {})
                return self._admitted(ctx, plan, reservation)
            if REQUEST in result.failures:  # released meanwhile (an earlier attempt's outcome was unknown)
                return self._store_down(ctx, StoreUnavailable("the request was released during its admission"))
            if result.failures:
                self._learn(plan, result.failures)
                verdict = judge(plan, result.failures)
                if isinstance(verdict, Refusal) and CONCURRENCY in result.failures and not reclaimed:
                    reclaimed = True
                    waited = await self._expired_or_wait(plan, verdict, deadline)
                    if waited is None:
                        continue  # expired leases were settled: their slots are free again
                    verdict = waited
                if isinstance(verdict, Refusal):
                    await self._refuse(ctx, plan, verdict)
                plan = verdict
            else:
                await anyio.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
        return self._store_down(ctx, StoreUnavailable("admission kept conflicting with other writes"))

    async def _bounded(self, call: Callable[..., T], *args: Any, until: float) -> T:
        """Run a blocking store call in a thread, waiting for it until the monotonic `until` at most (the thread
        is abandoned then; its botocore timeouts end it)."""
        with anyio.move_on_after(max(0.0, until - time.monotonic())):
            return await anyio.to_thread.run_sync(call, *args, abandon_on_cancel=True)
        raise StoreUnavailable("DynamoDB did not answer in time", outcome_unknown=True)

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
        return admitted_item(
            base,
            lease_until=plan.lease_expiry,
            started_epoch=ctx.started_epoch,
            mode=ctx.mode,
            prompt_tokens=estimate_prompt_tokens(ctx.chat.messages_as_dicts()),
            ticket=ticket,
        )

    async def _release(self, plan: AdmissionPlan, item: dict[str, Any], deadline: float) -> bool:
        """Give back what an admission of unknown outcome may have taken, before the 503 if DynamoDB answers in
        time, else from a background thread (idempotent either way). True when it is given back now."""
        expires = int(item["expires_at"])
        try:
            outcome = await self._bounded(self._stores.limits.release_unknown, plan, expires, until=deadline)
        except StoreUnavailable:
            threading.Thread(target=self._release_later, args=(plan, expires), daemon=True).start()
            return False
        logger.info("admission of %s of unknown outcome released: %s", plan.request_id, outcome)
        return True

    def _release_later(self, plan: AdmissionPlan, expires_at: int) -> None:
        give_up = time.monotonic() + RELEASE_LATER_S
        for attempt in range(1000):
            try:
                outcome = self._stores.limits.release_unknown(plan, expires_at)
                logger.info("admission of %s of unknown outcome released later: %s", plan.request_id, outcome)
                return
            except StoreUnavailable as exc:
                if time.monotonic() > give_up:
                    logger.error("could not release %s (%s); the reconciler settles it", plan.request_id, exc)
                    return
                time.sleep(min(5.0, 0.2 * 2**attempt))

    async def _expired_or_wait(self, plan: AdmissionPlan, refused: Refusal, deadline: float) -> Refusal | None:
        """A concurrency refusal: the key's earliest leases (one small Query). Expired ones are settled as `lost`
        (their relay stopped) and None returned, to try again; else the refusal, with Retry-After short while a
        holder renews its lease, and the earliest expiry once none does (`limits.concurrency_wait_ms`)."""
        try:
            leases = await self._bounded(self._stores.requests.earliest_leases, plan.key_id, until=deadline)
            now = self._clock()
            expired = [rid for rid, until in leases if until < now]
            if expired and any(await self._bounded(self._reconciler.settle, expired, until=deadline)):
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
        prices = [self._price_of(name) if self._price_of is not None else None for name in names]
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
            prompt_tokens=conservative_prompt_tokens(chat.messages_as_dicts()),
            max_tokens=chat.max_completion_tokens or chat.max_tokens,
            increment=self._settings.budget_increment_tokens,
            choices=chat.n,
        )

    def _plan(self, ctx: RequestContext, limits: Limits, reservation: Reservation | None = None) -> AdmissionPlan:
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
            self._settings.lease_s,
            prev.low_requests,
            prev.low_tokens,
            reserve_usd=reservation.usd if reservation is not None else Decimal(0),
            spend_epoch=ctx.started_epoch,
        )

    def _grant(self, plan: AdmissionPlan) -> Ticket:
        """What admitting `plan` takes (recorded on the request item, so the reconciler can give it back)."""
        limits = plan.limits
        return Ticket(
            minute=plan.window.minute,
            reserve=plan.reserve,
            lease=lease_attr(plan.request_id) if limits.max_concurrent is not None else None,
            settle_tokens=limits.tpm is not None,
        )

    def _admitted(self, ctx: RequestContext, plan: AdmissionPlan, reservation: Reservation | None) -> Ticket:
        seen = self._seen_at(plan.key_id, plan.window.minute)
        seen.own_requests += 1
        seen.own_tokens += plan.reserve
        headers = self._headers(plan, seen.low_requests, seen.low_tokens)
        return replace(self._grant(plan), headers=headers, budget=reservation)

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
        error = RateLimited(refusal_message(refused, plan.limits, plan.reserve, plan.reserve_usd), code=refused.code)
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
            put = functools.partial(self._stores.usage.put_refused, record, self._settings.usage_retention_days)
            await self._bounded(put, until=time.monotonic() + self._settings.admission_timeout_s)
        except StoreUnavailable as exc:
            self._lost(record.as_json(), exc)
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
        """Settle the request, within `RELAY_FINALIZE_TIMEOUT_S`; past it the record is logged and the settlement
        retried after the response (`_settle_later`), racing the reconciler (it settles the request as `lost` once
        the lease, no longer renewed, expires): the ledger takes exactly one of the two."""
        record = record_for(ctx, outcome)
        ticket = ctx.ticket
        until = time.monotonic() + self._settings.finalize_timeout_s
        settlement: Settlement | None = None
        try:
            reserved = await self._reserved(ctx, until)
            settlement = settlement_of(record, ticket, self._settings.usage_retention_days, self._clock(), reserved)
            settle = functools.partial(self._stores.limits.settle, settlement, deadline=until)
            settled = await self._bounded(settle, until=until)
        except StoreUnavailable as exc:
            self._lost(record.as_json(), exc)
            self._note(ctx.request_id, LedgerNote("pending"))
            if settlement is not None:
                later = (ctx, outcome, settlement)
                threading.Thread(target=self._settle_later, args=later, daemon=True).start()
            return
        if not settled:
            held = await self._ledger_holds(ctx.request_id, until)
            self._refused_late(record, held)
            self._note(ctx.request_id, held)
            return
        if settlement.tokens_minute is not None and settlement.tokens_delta:
            self._seen_at(ctx.key.key_id, settlement.tokens_minute).own_tokens += settlement.tokens_delta

    def _settle_later(self, ctx: RequestContext, outcome: StreamOutcome, settlement: Settlement) -> None:
        """The settlement DynamoDB did not take in time, retried from a thread after the response (on Lambda, in
        this environment's next invocations) with the same client request token, so an attempt that was applied
        unseen is answered as applied, not booked twice. Refused: another party settled the request first."""
        rid = settlement.record.request_id
        give_up = time.monotonic() + RELEASE_LATER_S
        for attempt in range(1000):
            try:
                settled = self._stores.limits.settle(settlement, attempts=1)
            except StoreUnavailable as exc:
                if time.monotonic() > give_up:
                    logger.error("could not settle %s (%s); the reconciler settles it as lost", rid, exc)
                    return
                time.sleep(min(5.0, 0.2 * 2**attempt))
                continue
            except Exception:  # a thread's failure must not go unseen, nor end it as an unhandled exception
                logger.exception("settling %s later failed; the reconciler settles it as lost", rid)
                return
            if settled:
                if self._telemetry is not None:
                    self._telemetry.counted_late(ctx, outcome, settlement.record)
            else:
                self._refused_late(settlement.record, self._ledger_holds_now(rid))
            return

    async def _ledger_holds(self, request_id: str, until: float) -> LedgerNote:
        """What the ledger holds for a request whose settlement it refused (one consistent read)."""
        try:
            return await self._bounded(self._ledger_holds_now, request_id, until=until)
        except StoreUnavailable:
            return LedgerNote("refused")

    def _ledger_holds_now(self, request_id: str) -> LedgerNote:
        try:
            item = self._stores.requests.get(request_id) or {}
        except StoreUnavailable:
            return LedgerNote("refused")
        reason = item.get("termination_reason")
        if reason == TerminationReason.LOST.value:  # the reconciler's, rebuilt as it wrote it: its last checkpoint
            return LedgerNote("refused", reason, lost_record(item, self._pricer))
        return LedgerNote("refused", None if reason is None else str(reason))

    def _refused_late(self, record: UsageRecord, held: LedgerNote) -> None:
        """A settlement the ledger refused (another party settled the request first): the record this relay would
        have written, in full, beside what the ledger holds, to correct it from the logs if need be."""
        extra: dict[str, Any] = {"usage_record": record.as_json(), "ledger_reason": held.reason}
        if held.record is not None:
            extra["ledger_record"] = held.record.as_json()
        self._log.warning("late settlement refused", extra=extra)

    def _note(self, request_id: str, note: LedgerNote) -> None:
        if self._telemetry is not None:
            self._telemetry.note(request_id, note)

    # --- budget extensions ---------------------------------------------------------------------------------
    async def extend_budget(self, ctx: RequestContext, reservation: Reservation, tokens: int) -> bool:
        """Reserve `tokens` more completion tokens for a running stream: one conditional write. True when granted
        (the reservation grows); False when a budget refused it or, failing closed, DynamoDB did not answer."""
        usd = reservation.cost_of(tokens)
        try:
            extend = functools.partial(
                self._stores.budgets.extend,
                ctx.key.key_id,
                ctx.request_id,
                reservation.periods,
                usd,
                reservation.extensions + 1,
            )
            granted = await self._bounded(extend, until=time.monotonic() + self._settings.admission_timeout_s)
        except StoreUnavailable as exc:
            reservation.uncertain = True  # applied, perhaps, with its answer lost: settlement reads what is held
            granted = self._settings.admission_fail_open
            logger.error("budget extension of %s: store unavailable (%s); granted=%s", ctx.request_id, exc, granted)
            self._metric(METRIC_BUDGET_EXTENSIONS, 1, {"result": "store_error"})
            if granted:
                reservation.grant(tokens, Decimal(0))  # fail open: the tokens run unreserved, as admission did
            return granted
        self._metric(METRIC_BUDGET_EXTENSIONS, 1, {"result": "granted" if granted else "refused"})
        if granted:
            reservation.grant(tokens, usd)
        return granted

    async def _reserved(self, ctx: RequestContext, until: float) -> Decimal:
        """The budget reservation to swap for the cost: the request's own account of it, unless an extension's
        outcome is unknown; then what its request item holds (every applied extension noted itself there)."""
        budget = ctx.ticket.budget if ctx.ticket is not None else None
        if budget is None:
            return Decimal(0)
        if not budget.uncertain:
            return budget.usd
        item = await self._bounded(self._stores.requests.get, ctx.request_id, until=until)
        return Decimal(str((item or {}).get("reserved_usd", budget.usd)))

    def _lost(self, record: dict[str, Any], exc: Exception) -> None:
        """A usage record DynamoDB would not take: one structured log line with the whole record, to replay from
        the logs (README, "What is guaranteed"); the reconciler settles the request from its last checkpoint."""
        self._metric(METRIC_USAGE_WRITE_FAILED, 1, {})
        self._log.error("usage record not written", extra={"usage_record": record, "store_error": str(exc)})

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

"""Per-key limits (pure): which limits apply to a key, the sliding-window arithmetic, how long a refused
caller should wait, and the `x-ratelimit-*` header values. No I/O and no clocks: callers pass the time in.

Algorithm (requests and tokens per minute): a sliding-window counter over fixed one-minute windows. Each
key has one counter item per minute (`requests`, `tokens`). At a moment `e` ms into minute `m`, the
estimated use of the last 60 s is

    cur(m) + floor(prev(m-1) * (60000 - e) / 60000)

and a request costing `c` (1 request; its reserved tokens) is admitted iff that plus `c` stays within the
limit. DynamoDB conditions cannot multiply, so admission checks a box inside that region instead:
`prev <= P` (P: the previous minute's final count, cached in-process) and `cur <= threshold(P)`. With the
right P the box is exactly the region; a stale P makes the write fail, its ALL_OLD carries the true count,
and the caller retries once with it. Previous minutes never change once over (late token settlements are
booked to the current minute), so the cache is learnt at most once per key, minute and process.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..settings import Settings

WINDOW_MS = 60_000

#: Limit names as stored in a key record's `limits` map, and whether each is a whole number.
LIMIT_NAMES: dict[str, bool] = {
    "rpm": True,
    "tpm": True,
    "max_concurrent": True,
    "daily_budget_usd": False,
    "monthly_budget_usd": False,
    "shards": True,
}
MAX_SHARDS = 64  # a key's rate and concurrency items split this many ways at most

#: Stored in a key record to override a configured default with "no limit".
UNLIMITED = Decimal(-1)

LEASE_PREFIX = "l_"


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force for one key; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    daily_budget_usd: Decimal | None = None
    monthly_budget_usd: Decimal | None = None
    shards: int | None = None  # the rate and concurrency items split this many ways (None: one, exact as one)

    @property
    def shard_count(self) -> int:
        """The shards in force: the key's `shards`, but never more than its requests per minute or concurrent streams
        (a shard with a share of 0 would refuse every request that reached it)."""
        count = max(1, min(MAX_SHARDS, self.shards or 1))
        for whole in (self.rpm, self.max_concurrent):
            if whole is not None:
                count = min(count, max(1, whole))
        return count

    def for_shard(self, shard: int) -> Limits:
        """The limits one shard enforces: the key's rate and concurrency limits split between its shards (`split`),
        so that the shards together never admit more than the key's limits; budgets are not split (their items are
        not sharded)."""
        count = self.shard_count
        if count == 1:
            return self
        return replace(
            self,
            rpm=None if self.rpm is None else split(self.rpm, count, shard),
            tpm=None if self.tpm is None else split(self.tpm, count, shard),
            max_concurrent=None if self.max_concurrent is None else split(self.max_concurrent, count, shard),
        )

    @property
    def rated(self) -> bool:
        """Whether the per-minute counter item takes part in admission."""
        return self.rpm is not None or self.tpm is not None

    @property
    def unlimited(self) -> bool:
        return (
            self.rpm is None
            and self.tpm is None
            and self.max_concurrent is None
            and self.daily_budget_usd is None
            and self.monthly_budget_usd is None
        )

    @classmethod
    def resolve(cls, overrides: Mapping[str, Decimal], defaults: Limits) -> Limits:
        """A key's limits: its own values where it has them (`UNLIMITED` lifts a default), else the defaults."""
        values: dict[str, Any] = {}
        for name, whole in LIMIT_NAMES.items():
            raw = overrides.get(name)
            if raw is None:
                values[name] = getattr(defaults, name)
            elif raw < 0:
                values[name] = None
            else:
                values[name] = int(raw) if whole else Decimal(raw)
        return cls(**values)

    def describe(self) -> dict[str, str]:
        """Human/JSON view: every limit, `unlimited` where there is none (and the shard count)."""
        view = {name: "unlimited" if getattr(self, name) is None else str(getattr(self, name)) for name in LIMIT_NAMES}
        view["shards"] = str(self.shard_count)
        return view


#: What a request with every limit set writes on its shard's partition, and the share of a partition's 1,000 write
#: units a second `shards_for` leaves a shard at the measured rate (the rest for bursts and uneven hashing).
UNITS_PER_REQUEST = 20
PARTITION_UNITS_PER_S = 1000
MEASURED_USE = 0.5


def shards_for(requests_per_s: float) -> int:
    """The shards a key needs at a measured rate of new requests, so that each shard's partition stays at
    `MEASURED_USE` of its capacity: 1 up to 25 requests a second, 40 at 1,000, `MAX_SHARDS` at most."""
    needed = requests_per_s * UNITS_PER_REQUEST / (PARTITION_UNITS_PER_S * MEASURED_USE)
    return max(1, min(MAX_SHARDS, math.ceil(needed - 1e-9)))


def split(total: int, shards: int, shard: int) -> int:
    """Shard `shard`'s part of `total`: the parts of all `shards` add up to `total` exactly (the first `total % shards`
    take one more)."""
    return total // shards + (1 if shard < total % shards else 0)


def default_limits(settings: Settings) -> Limits:
    """The limits of a key that sets none of its own: the deployment's `RELAY_DEFAULT_*`."""
    return Limits(
        rpm=settings.default_rpm,
        tpm=settings.default_tpm,
        max_concurrent=settings.default_max_concurrent,
        daily_budget_usd=settings.default_daily_budget_usd,
        monthly_budget_usd=settings.default_monthly_budget_usd,
    )


def parse_limit(name: str, text: str) -> Decimal | None:
    """A limit value given on the command line, as stored in the key record: a non-negative number,
    `unlimited` (stored as `UNLIMITED`), or `default` (None: drop the key's own value). Raises ValueError
    with a message for a person."""
    if name not in LIMIT_NAMES:
        raise ValueError(f"unknown limit '{name}'")
    word = text.strip().lower()
    if name == "shards":
        return None if word == "default" else _shards(text)
    if word in ("unlimited", "none"):
        return UNLIMITED
    if word == "default":
        return None
    try:
        value = Decimal(word)
    except InvalidOperation:
        raise ValueError(f"{name} must be a number, 'unlimited' or 'default', not '{text}'") from None
    if not value.is_finite():
        raise ValueError(f"{name} must be a finite number, not '{text}'")
    if value < 0:
        raise ValueError(f"{name} must not be negative (got {text})")
    if LIMIT_NAMES[name] and value != value.to_integral_value():
        raise ValueError(f"{name} must be a whole number (got {text})")
    return value.normalize() if LIMIT_NAMES[name] else value


# --- windows ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Window:
    """A moment as (epoch minute, milliseconds into it)."""

    minute: int
    elapsed_ms: int

    @classmethod
    def at(cls, epoch_s: float) -> Window:
        ms = int(epoch_s * 1000)
        return cls(ms // WINDOW_MS, ms % WINDOW_MS)


def weighted(prev: int, elapsed_ms: int) -> int:
    """The part of the previous minute's count still inside the sliding minute (floored)."""
    return prev * (WINDOW_MS - elapsed_ms) // WINDOW_MS


def threshold(limit: int, cost: int, prev: int, elapsed_ms: int) -> int:
    """The largest current-minute count that still admits `cost` more; negative: nothing can be admitted."""
    return limit - cost - weighted(prev, elapsed_ms)


def remaining(limit: int, cur: int, prev: int, elapsed_ms: int) -> int:
    return max(0, limit - cur - weighted(prev, elapsed_ms))


def wait_ms(cur: int, prev: int, elapsed_ms: int, allowance: int) -> int | None:
    """How long until `cur + weighted(prev) <= allowance` if nothing more is admitted meanwhile: 0 if it
    holds now, None if it never will (`allowance < 0`). At the minute boundary `cur` becomes `prev`."""
    if allowance < 0:
        return None
    if cur + weighted(prev, elapsed_ms) <= allowance:
        return 0
    if cur <= allowance:
        return max(1, _elapsed_when(prev, allowance - cur) - elapsed_ms)
    return (WINDOW_MS - elapsed_ms) + _elapsed_when(cur, allowance)


def _elapsed_when(prev: int, room: int) -> int:
    """The smallest elapsed ms at which `weighted(prev, e) <= room` (room >= 0)."""
    if prev <= room:
        return 0
    return WINDOW_MS * (prev - room - 1) // prev + 1


def format_duration(ms: int) -> str:
    """Duration in the style OpenAI uses for `x-ratelimit-reset-*`: `250ms`, `12s`, `1m30s`."""
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def retry_after_s(ms: int) -> int:
    """Whole seconds for `Retry-After`, never 0 for a refusal."""
    return max(1, math.ceil(ms / 1000))


def rate_headers(kind: str, limit: int, cur: int, prev: int, elapsed_ms: int) -> dict[str, str]:
    """The `x-ratelimit-*-{kind}` trio (`kind`: requests or tokens). Reset: until nothing counted so far
    weighs on the sliding minute any more."""
    reset = wait_ms(cur, prev, elapsed_ms, 0) or 0
    return {
        f"x-ratelimit-limit-{kind}": str(limit),
        f"x-ratelimit-remaining-{kind}": str(remaining(limit, cur, prev, elapsed_ms)),
        f"x-ratelimit-reset-{kind}": format_duration(reset),
    }


# --- cancel calls -----------------------------------------------------------------------------------------
CANCELS_PER_REQUEST = 2  # by relay id and by client id, or one call retried
MIN_CANCEL_BURST = 4
UNLIMITED_CANCELS_PER_MINUTE = 600  # a key without an RPM: cancels still write to DynamoDB
UNLIMITED_CANCEL_BURST = 100  # ... and without a concurrency limit either


@dataclass(frozen=True, slots=True)
class CancelAllowance:
    """A key's cancel calls: `burst` at once, refilled at `per_minute`."""

    burst: int
    per_minute: int


def cancel_allowance(limits: Limits) -> CancelAllowance:
    """The cancel calls a key may make. Each writes to DynamoDB (a mark on the request, or a pending mark kept a few
    minutes for a client id), so a key cancels at the pace it may start requests: twice per request of its RPM, in
    bursts of twice its concurrent streams (without a concurrency limit, a minute's worth, at most 100), and never
    fewer than 4 at once; a key without an RPM, 600 a minute."""
    rpm = limits.rpm
    per_minute = UNLIMITED_CANCELS_PER_MINUTE if rpm is None else max(1, CANCELS_PER_REQUEST * rpm)
    if limits.max_concurrent is not None:
        burst = CANCELS_PER_REQUEST * limits.max_concurrent
    else:
        burst = min(per_minute, UNLIMITED_CANCEL_BURST)
    return CancelAllowance(max(MIN_CANCEL_BURST, burst), per_minute)


# --- budgets ----------------------------------------------------------------------------------------------
def day_of(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch_s))


def month_of(epoch_s: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(epoch_s))


@dataclass(frozen=True, slots=True)
class SpendPeriods:
    """The day and the month a request's spend is booked to (`D#<yyyy-mm-dd>`, `M#<yyyy-mm>`): the one builder of
    both, for the reservation, its release, the settlement and the usage record alike."""

    day: str
    month: str

    @classmethod
    def at(cls, epoch_s: float) -> SpendPeriods:
        return cls(f"D#{day_of(epoch_s)}", f"M#{month_of(epoch_s)}")

    def both(self) -> tuple[str, str]:
        return self.day, self.month


def next_day_epoch(epoch_s: float) -> int:
    return (int(epoch_s) // 86400 + 1) * 86400


def next_month_epoch(epoch_s: float) -> int:
    now = time.gmtime(epoch_s)
    year, month = (now.tm_year + 1, 1) if now.tm_mon == 12 else (now.tm_year, now.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))


# --- concurrency leases -----------------------------------------------------------------------------------
#: A concurrency refusal's wait while a holder of the key's slots is alive: a running stream may end at any moment,
#: and its lease (renewed while it runs) says only when a crashed holder would be reclaimed. Two seconds, so that the
#: OpenAI SDKs' two default retries span four seconds.
LIVE_HOLDER_RETRY_MS = 2000


def concurrency_wait_ms(lease_expiries: Sequence[float], now_s: float, lease_s: float) -> int:
    """How long a caller refused by the concurrency limit should wait, from the expiries (epoch s) of the key's
    earliest leases. Leases are renewed every third of `lease_s` while their streams run, so one with more than half
    left was renewed in the last round (however slow): a live stream, which may end at any moment, hence a short wait
    (`LIVE_HOLDER_RETRY_MS`), as for no lease found (a slot was just given back). When every lease seen has half or
    less left, their holders stopped renewing (a relay paused or gone): their slots come back when the earliest
    expires and the reconciler settles it, so the wait is that expiry, at least 1 s (1 s for one already expired)."""
    renewed_after = now_s + lease_s / 2
    if not lease_expiries or any(until > renewed_after for until in lease_expiries):
        return LIVE_HOLDER_RETRY_MS
    return max(1000, math.ceil((min(lease_expiries) - now_s) * 1000))


def lease_attr(request_id: str) -> str:
    """The attribute of the key's concurrency item that holds this request's lease (its expiry, epoch s)."""
    return LEASE_PREFIX + request_id


def reserve_tokens(prompt_tokens: int, max_tokens: int | None, choices: int = 1) -> int:
    """Tokens reserved against TPM at admission: the prompt estimate plus the completion cap, if the
    request sets one. Settled with the actual count after the stream."""
    return prompt_tokens + choices * (max_tokens or 0)


# --- one admission: the plan, and the judgement of a refused write -----------------------------------------
#: Names of the parts of the admission write, as the adapter reports which of them refused.
RATE, PREV, CONCURRENCY, DAILY, MONTHLY = "rate", "prev", "concurrency", "daily", "monthly"

BUDGET_LIMITS = frozenset({"daily_budget_usd", "monthly_budget_usd"})


@dataclass(frozen=True, slots=True)
class AdmissionPlan:
    """Everything one admission write needs to decide: limits, the moment, the cached previous minute and the
    budget reservation."""

    request_id: str
    key_id: str
    limits: Limits
    now_s: float
    reserve: int
    lease_s: float
    prev_requests: int = 0
    prev_tokens: int = 0
    reserve_usd: Decimal = Decimal(0)  # the budget reservation: the request's worst case before its next extension
    spend_epoch: float | None = None  # when the request started: the day and month its spend belongs to
    shard: int = 0  # which of the key's shards the rate and concurrency parts take from (`limits` is its share)
    shards: int = 1  # how many the key has in force (its share's own count is not the key's)

    @property
    def counter_id(self) -> str:
        """The name of the counters this plan takes from: the key, or one of its shards."""
        return counter_id(self.key_id, self.shard)

    @property
    def spend_at(self) -> float:
        """The moment that names the request's spend items (its usage record's day and month)."""
        return self.now_s if self.spend_epoch is None else self.spend_epoch

    @property
    def window(self) -> Window:
        return Window.at(self.now_s)

    @property
    def requests_threshold(self) -> int | None:
        if self.limits.rpm is None:
            return None
        return threshold(self.limits.rpm, 1, self.prev_requests, self.window.elapsed_ms)

    @property
    def tokens_threshold(self) -> int | None:
        if self.limits.tpm is None:
            return None
        return threshold(self.limits.tpm, self.reserve, self.prev_tokens, self.window.elapsed_ms)

    @property
    def lease_expiry(self) -> int:
        return math.ceil(self.now_s + self.lease_s)

    def blocked(self) -> tuple[str, ...]:
        """Limits that refuse whatever the store holds (a zero limit, a request larger than its TPM, or a
        previous minute that alone fills the window): no round trip needed."""
        limits = self.limits
        checks = (
            ("rpm", (self.requests_threshold or 0) < 0),
            ("tpm", (self.tokens_threshold or 0) < 0),
            ("max_concurrent", limits.max_concurrent == 0),
            ("daily_budget_usd", _over_budget(limits.daily_budget_usd, self.reserve_usd)),
            ("monthly_budget_usd", _over_budget(limits.monthly_budget_usd, self.reserve_usd)),
        )
        return tuple(name for name, refused in checks if refused)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which limits refused, the counts seen, and how long the caller should wait (None: not by waiting)."""

    limits: tuple[str, ...]
    retry_after_ms: int | None
    cur_requests: int | None = None
    cur_tokens: int | None = None
    prev_requests: int = 0
    prev_tokens: int = 0

    @property
    def code(self) -> str:
        return "budget_exceeded" if BUDGET_LIMITS.intersection(self.limits) else "rate_limit_exceeded"


def counter_id(key_id: str, shard: int) -> str:
    """The key's counters, or one shard's (`<key_id>#<shard>`; shard 0 is the key's own, as without shards)."""
    return key_id if shard == 0 else f"{key_id}#{shard}"


def scaled_headers(headers: dict[str, str], limits: Limits) -> dict[str, str]:
    """A shard's `x-ratelimit-*` headers as the key's: the key's limits, and the shard's remaining times the shard
    count (an estimate: the shards fill evenly, since requests are spread over them by their ids)."""
    count = limits.shard_count
    if count == 1:
        return headers
    out = dict(headers)
    for kind, total in (("requests", limits.rpm), ("tokens", limits.tpm)):
        if total is None or f"x-ratelimit-limit-{kind}" not in out:
            continue
        out[f"x-ratelimit-limit-{kind}"] = str(total)
        out[f"x-ratelimit-remaining-{kind}"] = str(min(total, int(out[f"x-ratelimit-remaining-{kind}"]) * count))
    return out


def judge(plan: AdmissionPlan, failures: Mapping[str, Mapping[str, Any] | None]) -> AdmissionPlan | Refusal:
    """After a refused admission write (`failures`: the parts whose condition failed, with their ALL_OLD
    items): a corrected plan worth another attempt (the cached previous minute was stale), or the refusal."""
    prev_r, prev_t = plan.prev_requests, plan.prev_tokens
    if PREV in failures:
        old = failures[PREV] or {}
        prev_r, prev_t = max(prev_r, _int(old, "requests")), max(prev_t, _int(old, "tokens"))
    fixed = replace(plan, prev_requests=prev_r, prev_tokens=prev_t)
    refused: list[str] = []
    cur_r = cur_t = None
    if RATE in failures:
        old = failures[RATE] or {}
        cur_r, cur_t = _int(old, "requests"), _int(old, "tokens")
        if fixed.requests_threshold is not None and cur_r > fixed.requests_threshold:
            refused.append("rpm")
        if fixed.tokens_threshold is not None and cur_t > fixed.tokens_threshold:
            refused.append("tpm")
    if CONCURRENCY in failures:  # expired leases are the reconciler's (admit.py), never taken over here
        refused.append("max_concurrent")
    refused += [
        name for part, name in ((DAILY, "daily_budget_usd"), (MONTHLY, "monthly_budget_usd")) if part in failures
    ]
    if not refused:
        return fixed
    return refusal(fixed, tuple(refused), cur_r or 0, cur_t or 0)


def refusal(plan: AdmissionPlan, refused: tuple[str, ...], cur_requests: int, cur_tokens: int) -> Refusal:
    """The refusal of `plan` by `refused`, with the wait until each of them would admit it."""
    e = plan.window.elapsed_ms
    waits: list[int | None] = []
    for name in refused:
        if name == "rpm" and plan.limits.rpm is not None:
            waits.append(wait_ms(cur_requests, plan.prev_requests, e, plan.limits.rpm - 1))
        elif name == "tpm" and plan.limits.tpm is not None:
            waits.append(wait_ms(cur_tokens, plan.prev_tokens, e, plan.limits.tpm - plan.reserve))
        elif name == "max_concurrent":
            waits.append(None if plan.limits.max_concurrent == 0 else LIVE_HOLDER_RETRY_MS)
        elif name == "daily_budget_usd":
            waits.append(
                None
                if _over_budget(plan.limits.daily_budget_usd, plan.reserve_usd)
                else math.ceil((next_day_epoch(plan.now_s) - plan.now_s) * 1000)
            )
        elif name == "monthly_budget_usd":
            waits.append(
                None
                if _over_budget(plan.limits.monthly_budget_usd, plan.reserve_usd)
                else math.ceil((next_month_epoch(plan.now_s) - plan.now_s) * 1000)
            )
    known = [w for w in waits if w is not None]
    wait = max(known) if known and len(known) == len(waits) else None
    return Refusal(refused, wait, cur_requests, cur_tokens, plan.prev_requests, plan.prev_tokens)


def refusal_message(refused: Refusal, limits: Limits, reserve: int, reserve_usd: Decimal = Decimal(0)) -> str:
    """What the client reads in the 429 body (OpenAI-style wording, no secrets)."""
    parts = {
        "rpm": f"requests per minute (RPM): limit {limits.rpm}",
        "tpm": f"tokens per minute (TPM): limit {limits.tpm}, this request reserves {reserve}",
        "max_concurrent": f"concurrent streams: limit {limits.max_concurrent}",
        "daily_budget_usd": f"daily budget: limit ${limits.daily_budget_usd}",
        "monthly_budget_usd": f"monthly budget: limit ${limits.monthly_budget_usd}",
    }
    kind = "Budget exhausted" if refused.code == "budget_exceeded" else "Rate limit reached"
    text = f"{kind} for this key on " + "; ".join(parts[name] for name in refused.limits) + "."
    if (limits.shards or 1) > 1 and refused.code != "budget_exceeded":
        text += f" (The key's limits are split over its {limits.shards} shards; this is one shard's share.)"
    if refused.code == "budget_exceeded" and reserve_usd:
        text += f" This request reserves ${reserve_usd:.8f} (its prompt and the completion tokens it may use)."
    if refused.retry_after_ms is not None:
        return text + f" Please try again in {format_duration(refused.retry_after_ms)}."
    if "tpm" in refused.limits and limits.tpm is not None and reserve > limits.tpm:
        return text + " The request is larger than the limit: lower max_tokens or the prompt."
    if refused.code == "budget_exceeded" and reserve_usd:
        return text + " The request alone is larger than the budget: lower max_tokens or the prompt."
    return text + " Waiting will not help; ask for a higher limit."


def _over_budget(budget: Decimal | None, reserve_usd: Decimal) -> bool:
    """A budget that refuses this request whatever has been spent: zero, or smaller than its reservation."""
    return budget is not None and (budget <= 0 or reserve_usd > budget)


def _int(item: Mapping[str, Any], name: str) -> int:
    value = item.get(name)
    return int(value) if value is not None else 0


def _shards(text: str) -> Decimal:
    word = text.strip()
    if not word.isdigit() or not 1 <= int(word) <= MAX_SHARDS:
        raise ValueError(f"shards must be a whole number from 1 to {MAX_SHARDS}, or 'default', not '{text}'")
    return Decimal(int(word))

"""Admission and settlement against a real moto server (DynamoDB over HTTP): exactness under racing threads
and processes, the cached previous minute, concurrency leases and their reclaim, the refusal record, the
failure policy, and settlement retries."""

from __future__ import annotations

import calendar
import io
import json
import logging
import multiprocessing
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import anyio
import pytest
from aws_lambda_powertools import Logger
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

from llm_relay.dynamo import Stores
from llm_relay.dynamo.layout import key_attributes
from llm_relay.errors import RateLimited, ServiceUnavailable
from llm_relay.limits import Limiter, Ticket
from llm_relay.limits.reporting import NoMetrics
from llm_relay.metering import StreamMeter, Usage
from llm_relay.outcome import Ending, StreamOutcome, outcome_of
from llm_relay.pricing import PriceTable
from llm_relay.reconciler import Reconciler
from llm_relay.termination import TerminationReason
from llm_relay.usage import UsageRecord
from tests.integration.limits_support import MID_MINUTE, admit_all, context, key_with, limiter, race_worker
from tests.waiting import wait_until

PRICES = PriceTable.load()


def outcome(reason: TerminationReason = TerminationReason.STOP, usage: Usage | None = None) -> StreamOutcome:
    """An outcome as the relay builds it: priced by the relay's pricer."""
    usage = usage or Usage(5, 20)
    return StreamOutcome(
        reason=reason,
        usage=usage,
        ttft_s=0.05,
        tpot_s=0.01,
        duration_s=0.3,
        chunks=21,
        cost_usd=PRICES("gpt-4o-mini", usage),
    )


# --- exact under concurrency -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("limit", "n", "kwargs"),
    [
        ({"rpm": 7}, 24, {}),
        ({"max_concurrent": 4}, 24, {}),
        ({"tpm": 1000}, 24, {"max_tokens": 95}),  # each reserves 5 (prompt estimate) + 95 = 100 tokens
    ],
)
def test_racing_threads_admit_exactly_the_limit(
    stores: Stores, moto_endpoint: str, limit: dict[str, int], n: int, kwargs: dict[str, Any]
) -> None:
    # GIVEN a key with one limit that allows 7, 4 or 10 requests
    key = key_with(**limit)
    expected = {"rpm": 7, "max_concurrent": 4, "tpm": 10}[next(iter(limit))]
    # WHEN 24 admissions race from as many threads
    outcomes = admit_all(limiter(moto_endpoint, stores.table_name), key, n, **kwargs)
    # THEN exactly that many are admitted
    assert outcomes.count("admitted") == expected
    assert outcomes.count("refused") == n - expected


@pytest.mark.slow
def test_racing_processes_admit_exactly_the_limit(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN two keys, one with rpm 11 and one with 12 concurrent streams, and 3 processes with 10 threads each
    # (both limits above one process's 10 admissions: reaching one takes admissions from several processes)
    rpm_key, conc_key = key_with(rpm=11), key_with(max_concurrent=12)
    processes, per_key = 3, 10
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(
            target=race_worker,
            args=(
                moto_endpoint,
                stores.table_name,
                [key_attributes(rpm_key), key_attributes(conc_key)],
                per_key,
                MID_MINUTE,
                barrier,
                results,
                w,
            ),
        )
        for w in range(processes)
    ]
    # WHEN every process fires its 10 admissions per key at the same moment
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=60) for _ in range(processes * 2)]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    # THEN across all processes exactly the limit was admitted, and the rest refused
    admitted = {key.key_id: sum(r[2] for r in reports if r[0] == key.key_id) for key in (rpm_key, conc_key)}
    refused = {key.key_id: sum(r[3] for r in reports if r[0] == key.key_id) for key in (rpm_key, conc_key)}
    assert admitted == {rpm_key.key_id: 11, conc_key.key_id: 12}
    assert refused == {rpm_key.key_id: 30 - 11, conc_key.key_id: 30 - 12}
    # AND more than one process took part in the admissions of each key (the race was real)
    for key in (rpm_key, conc_key):
        admitting = {worker for key_id, worker, admitted_here, _ in reports if key_id == key.key_id and admitted_here}
        assert len(admitting) > 1, (key.key_id, reports)


# --- the sliding window ----------------------------------------------------------------------------------------
def test_previous_minute_learnt_from_the_refusal_then_cached(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN another instance admitted 6 of rpm 10 in minute m
    key = key_with(rpm=10)
    minute_start = MID_MINUTE - 30
    assert (
        admit_all(limiter(moto_endpoint, stores.table_name, clock=lambda: minute_start + 10), key, 6, "early").count(
            "admitted"
        )
        == 6
    )
    # WHEN a fresh instance (nothing cached) admits half-way through minute m+1
    attempts: list[int] = []

    class Attempts(NoMetrics):
        def admission_attempts(self, count: int) -> None:
            attempts.append(count)

    late = limiter(moto_endpoint, stores.table_name, clock=lambda: minute_start + 90, metrics=Attempts())
    outcomes = [admit_all(late, key, 1, f"late{i}")[0] for i in range(10)]
    # THEN the previous minute weighs half (3): 7 more are admitted, the rest refused
    assert outcomes == ["admitted"] * 7 + ["refused"] * 3
    # AND only the first admission paid an extra round trip to learn the previous minute
    assert attempts == [2, 1, 1, 1, 1, 1, 1]


def test_admitted_and_refused_answers_carry_rate_headers(stores: Stores, moto_endpoint: str) -> None:
    key = key_with(rpm=2, tpm=1000)
    limits = limiter(moto_endpoint, stores.table_name)
    first = anyio.run(limits.admit, context(key, "req_a")).headers
    assert first["x-ratelimit-limit-requests"] == "2" and first["x-ratelimit-remaining-requests"] == "1"
    assert first["x-ratelimit-limit-tokens"] == "1000" and first["x-ratelimit-remaining-tokens"] == "995"
    anyio.run(limits.admit, context(key, "req_b"))
    with pytest.raises(RateLimited) as refused:
        anyio.run(limits.admit, context(key, "req_c"))
    headers = refused.value.headers
    assert refused.value.code == "rate_limit_exceeded"
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["retry-after"] == "31"
    assert headers["x-ratelimit-reset-requests"].endswith("s") and headers["retry-after-ms"] == "30001"


# --- leases ------------------------------------------------------------------------------------------------------
def test_a_dead_streams_lease_is_reclaimed_once_expired(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN one concurrent stream allowed, leases of 60 s, and a stream whose process died (never finalized)
    key = key_with(max_concurrent=1)
    now = [MID_MINUTE]
    limits = limiter(moto_endpoint, stores.table_name, clock=lambda: now[0], lease_s=60)
    dead = context(key, "req_dead")
    dead = replace(dead, ticket=anyio.run(limits.admit, dead))
    # WHEN another request comes while the lease runs: refused, told to retry when that lease expires
    now[0] += 30
    with pytest.raises(RateLimited) as early:
        anyio.run(limits.admit, context(key, "req_early"))
    assert 29 <= int(early.value.headers["retry-after"]) <= 31
    # AND once the lease expired: the dead request is settled as lost on the spot and its slot taken over
    now[0] += 31
    anyio.run(limits.admit, context(key, "req_after"))
    slots = stores.limits.read_counters(key.key_id, now[0])["concurrency"]
    assert slots["active"] == 1 and set(slots) == {"pk", "sk", "active"}  # a bare count, no per-stream attribute
    # AND if the "dead" stream was only slow and finalizes now, it counts nothing more: settled once
    anyio.run(limits.finalize, dead, outcome())
    assert stores.limits.read_counters(key.key_id, now[0])["concurrency"]["active"] == 1
    records = stores.usage.for_key(key.key_id, 0, 2e10)
    assert sorted((r.request_id, r.termination_reason) for r in records) == [
        ("req_dead", "lost"),
        ("req_early", "rate_limit_exceeded"),
    ]


def test_finalization_releases_the_slot_settles_tokens_and_records_spend(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN a key with 1 stream, tpm 1000 and a budget, and one admitted request reserving 5 + 95 tokens
    key = key_with(max_concurrent=1, tpm=1000, daily_budget_usd="1")
    limits = limiter(moto_endpoint, stores.table_name)
    ctx = context(key, "req_one", max_tokens=95)
    ctx = replace(ctx, ticket=anyio.run(limits.admit, ctx))
    # WHEN it finishes having used 12 + 20 tokens
    anyio.run(limits.finalize, ctx, outcome(usage=Usage(12, 20)))
    # THEN the slot is free, the reservation settled to the actual tokens, and spend recorded exactly
    counters = stores.limits.read_counters(key.key_id, MID_MINUTE)
    assert counters["concurrency"]["active"] == 0 and counters["rate"]["tokens"] == 32
    day = stores.usage.spend(key.key_id, "D#" + time.strftime("%Y-%m-%d", time.gmtime(ctx.started_epoch)))
    assert day["cost_usd"] == Decimal("0.0000138") and day["requests"] == 1 and day["completion_tokens"] == 20
    anyio.run(limits.admit, context(key, "req_two"))  # the slot is usable again


def test_refused_requests_are_recorded(stores: Stores, moto_endpoint: str) -> None:
    key = key_with(rpm=1)
    limits = limiter(moto_endpoint, stores.table_name)
    assert admit_all(limits, key, 1, "ok") == ["admitted"]
    assert admit_all(limits, key, 1, "no") == ["refused"]
    records = stores.usage.for_key(key.key_id, 0, 2e10)
    assert [(r.request_id, r.termination_reason, r.usage_source, r.cost_usd) for r in records] == [
        ("no_0", "rate_limit_exceeded", "none", Decimal(0))
    ]


# --- failure policy ----------------------------------------------------------------------------------------------
def _unreachable_client() -> Any:
    import boto3

    return boto3.client(
        "dynamodb",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=0.5, read_timeout=0.5),
    )


class _Throttled:
    """A DynamoDB client that throttles every write (what botocore raises once its own retries are spent)."""

    def __getattr__(self, name: str) -> Any:
        def throttled(**kwargs: Any) -> Any:
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, name
            )

        return throttled


@pytest.mark.parametrize("client", [_unreachable_client, _Throttled], ids=["unreachable", "throttling"])
@pytest.mark.parametrize("limits", [{"rpm": 5}, {}], ids=["limited", "unlimited"])
def test_store_down_fails_closed_by_default_and_open_when_configured(
    stores: Stores, moto_endpoint: str, client: Any, limits: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    key = key_with(**limits)
    metrics: list[tuple[str, dict[str, str]]] = []

    class Recorded(NoMetrics):
        def admission_store_error(self, policy: str) -> None:
            metrics.append(("AdmissionStoreError", {"policy": policy}))

    closed = limiter(moto_endpoint, stores.table_name, client=client(), metrics=Recorded())
    # WHEN DynamoDB cannot be reached at admission: 503, with a metric
    with pytest.raises(ServiceUnavailable) as refused:
        anyio.run(closed.admit, context(key, "req_x"))
    assert refused.value.status_code == 503 and refused.value.headers["retry-after"] == "1"
    assert metrics == [("AdmissionStoreError", {"policy": "fail_closed"})]
    # AND with RELAY_ADMISSION_FAIL_OPEN the request is admitted, loudly
    opened = limiter(moto_endpoint, stores.table_name, client=client(), admission_fail_open=True)
    with caplog.at_level(logging.ERROR, logger="llm_relay.limits.admit"):
        assert anyio.run(opened.admit, context(key, "req_y")) == Ticket()
    assert any("FAIL-OPEN" in r.getMessage() for r in caplog.records)


# --- settlement retries ------------------------------------------------------------------------------------------
class _Wrapped:
    """A real DynamoDB client with some of its calls replaced (a fault injected); the rest delegated."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _Flaky(_Wrapped):
    """Delegates to a real client; the first `failures` TransactWriteItems calls fail as a 500 would."""

    def __init__(self, client: Any, failures: int) -> None:
        super().__init__(client)
        self.failures = failures

    def transact_write_items(self, **kwargs: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "boom"}}, "TransactWriteItems")
        return self._client.transact_write_items(**kwargs)


def test_settlement_is_retried_then_logged_whole_never_raised(stores: Stores, moto_endpoint: str) -> None:
    key = key_with(rpm=100)
    usage = stores.usage
    # GIVEN a store failing twice: the record is still written, once
    limits = limiter(moto_endpoint, stores.table_name, client=_Flaky(stores.client, 2))
    anyio.run(limits.finalize, context(key, "req_retried"), outcome())
    assert [r.request_id for r in usage.for_key(key.key_id, 0, 2e10)] == ["req_retried"]
    # GIVEN a store that never comes back, and the limiter's Powertools Logger writing to a buffer
    emitted = io.StringIO()
    log = Logger(service=f"test-{uuid.uuid4().hex[:8]}", logger_handler=logging.StreamHandler(emitted))
    limits = limiter(moto_endpoint, stores.table_name, client=_Flaky(stores.client, 100), log=log)
    # WHEN a request is finalized: finalize returns
    anyio.run(limits.finalize, context(key, "req_lost"), outcome(TerminationReason.CLIENT_CANCELLED))
    # THEN the output holds exactly one line about it: structured JSON with the complete record, no secret
    lines = [json.loads(line) for line in emitted.getvalue().splitlines() if line.strip()]
    lost = [line for line in lines if line.get("message") == "usage record not written"]
    assert len(lost) == 1 and lost[0]["level"] == "ERROR"
    record = lost[0]["usage_record"]
    assert set(record) == set(UsageRecord("k", "r", "m", 0.0, "stop").as_json())
    assert record["request_id"] == "req_lost" and record["termination_reason"] == "client_cancelled"
    assert record["cost_usd"] is not None and "authorization" not in emitted.getvalue().lower()


def test_an_upstream_that_never_answered_costs_nothing(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN an admitted request whose upstream failed before answering (the relay finalizes it unpriced)
    key = key_with(daily_budget_usd="1")
    limits = limiter(moto_endpoint, stores.table_name)
    ctx = context(key, "req_failed_open")
    ctx = replace(ctx, ticket=anyio.run(limits.admit, ctx))
    failed = outcome_of(
        ctx,
        Ending(TerminationReason.UPSTREAM_ERROR, "Upstream answered 503."),
        StreamMeter(started_at=ctx.started_at),
        ended_at=ctx.started_at + 0.2,
        answered=False,
        pricer=PRICES,
    )
    anyio.run(limits.finalize, ctx, failed)
    # THEN its record costs 0 (not "unknown"), with the prompt estimate marked as such
    [record] = stores.usage.for_key(key.key_id, 0, 2e10)
    assert (record.termination_reason, record.cost_usd, record.usage_source) == (
        "upstream_error",
        Decimal(0),
        "estimated",
    )


class _Conflicting(_Flaky):
    """The first `failures` TransactWriteItems calls are cancelled as DynamoDB cancels a transaction that
    touches an item another transaction is writing (moto never does)."""

    def transact_write_items(self, **kwargs: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            reasons = [{"Code": "None"}] + [{"Code": "TransactionConflict"}] * (len(kwargs["TransactItems"]) - 1)
            response: Any = {
                "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                "CancellationReasons": reasons,
            }
            raise ClientError(
                response,
                "TransactWriteItems",
            )
        return self._client.transact_write_items(**kwargs)


def test_transaction_conflicts_are_retried_without_counting_twice(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN a key with rpm 3, and DynamoDB cancelling the first two admission writes for a conflict
    key = key_with(rpm=3)
    limits = limiter(moto_endpoint, stores.table_name, client=_Conflicting(stores.client, 2))
    # WHEN requests come one after another
    outcomes = [admit_all(limits, key, 1, f"r{i}")[0] for i in range(4)]
    # THEN the conflicted one is admitted after its retries, and the limit still counts exactly
    assert outcomes == ["admitted"] * 3 + ["refused"]
    counters = stores.limits.read_counters(key.key_id, MID_MINUTE)
    assert counters["rate"]["requests"] == 3


# --- failing open after an admission of unknown outcome ---------------------------------------------------------
class _LateAnswer(_Wrapped):
    """DynamoDB applies the first admission transaction but answers it too late for the relay; the release's
    tombstone PutItem fails `put_failures` times (DynamoDB still unwell)."""

    def __init__(self, client: Any, put_failures: int = 0) -> None:
        super().__init__(client)
        self.late = True
        self.put_failures = put_failures

    def transact_write_items(self, **kwargs: Any) -> Any:
        out = self._client.transact_write_items(**kwargs)
        if self.late:
            self.late = False
            time.sleep(2.0)  # the answer arrives after the relay's admission timeout (1 s): outcome unknown
        return out

    def put_item(self, **kwargs: Any) -> Any:
        if self.put_failures > 0:
            self.put_failures -= 1
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "boom"}}, "PutItem")
        return self._client.put_item(**kwargs)


def _failing_open(stores: Stores, endpoint: str, client: Any) -> Limiter:
    """A limiter that fails open, with a 1 s admission budget, on `client`."""
    return limiter(
        endpoint, stores.table_name, client=client, admission_fail_open=True, admission_timeout_s=1.0, clock=time.time
    )


def _held(stores: Stores, key_id: str) -> tuple[int, Decimal, Decimal, int]:
    """(slots in use, committed_usd, reserved_usd of today, usage records) of a key."""
    day = stores.limits._get(key_id, "SPEND#D#" + time.strftime("%Y-%m-%d", time.gmtime())) or {}
    active = int((stores.limits._get(key_id, "CONC") or {}).get("active", 0))
    records = len(stores.usage.for_key(key_id, 0, 2e10))
    return active, Decimal(day.get("committed_usd", 0)), Decimal(day.get("reserved_usd", 0)), records


def test_fail_open_after_an_unknown_admission_records_the_request_and_holds_nothing(
    stores: Stores, moto_endpoint: str
) -> None:
    # GIVEN fail-open, and an admission DynamoDB applied but answered too late (its release then given back)
    key = key_with(max_concurrent=2, daily_budget_usd="10")
    limits = _failing_open(stores, moto_endpoint, _LateAnswer(stores.client))
    ctx = context(key, "req_" + uuid.uuid4().hex)
    # WHEN it is admitted open and then finishes
    ticket = anyio.run(limits.admit, ctx)
    assert ticket == Ticket()
    anyio.run(limits.finalize, replace(ctx, ticket=ticket), outcome())
    # THEN no slot or reservation is held, and its usage is recorded once, its cost committed
    active, committed, reserved, records = _held(stores, key.key_id)
    assert (active, reserved, records) == (0, Decimal(0), 1)
    assert committed == PRICES("gpt-4o-mini", Usage(5, 20))


def test_no_fail_open_while_an_unknown_admission_is_not_given_back_yet(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN fail-open, an admission applied but answered too late, and DynamoDB refusing the release for a while
    key = key_with(max_concurrent=2, daily_budget_usd="10")
    limits = _failing_open(stores, moto_endpoint, _LateAnswer(stores.client, put_failures=3))
    # WHEN the request is admitted
    with pytest.raises(ServiceUnavailable):
        anyio.run(limits.admit, context(key, "req_" + uuid.uuid4().hex))
    # THEN it is refused (503), not admitted open, and the background release gives back what it took
    wait_until(lambda: _held(stores, key.key_id)[:3] == (0, Decimal(0), Decimal(0)), "the admission given back")


class _LostAnswer(_Wrapped):
    """Applies a TransactWriteItems and then loses its answer, once, when `lose` is set (a read timeout)."""

    lose = False

    def transact_write_items(self, **kwargs: Any) -> Any:
        out = self._client.transact_write_items(**kwargs)
        if self.lose:
            self.lose = False
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9")
        return out


def _spend(stores: Stores, key_id: str, sk: str) -> tuple[Decimal, Decimal, Decimal]:
    item = stores.limits._get(key_id, sk) or {}
    committed, reserved, cost = (Decimal(item.get(name, 0)) for name in ("committed_usd", "reserved_usd", "cost_usd"))
    return committed, reserved, cost


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_an_extension_whose_answer_was_lost_is_settled_from_what_the_request_holds(
    stores: Stores, moto_endpoint: str, fail_open: bool
) -> None:
    # GIVEN a budgeted request, and an extension DynamoDB applied but whose answer was lost
    key = key_with(daily_budget_usd="10")
    lost = _LostAnswer(stores.client)
    limits = limiter(moto_endpoint, stores.table_name, client=lost, clock=time.time, admission_fail_open=fail_open)
    ctx = context(key, "req_" + uuid.uuid4().hex)
    ctx = replace(ctx, ticket=anyio.run(limits.admit, ctx))
    assert ctx.ticket is not None and ctx.ticket.budget is not None
    lost.lose = True
    reservation = ctx.ticket.budget
    guard = limits.budget_guard(ctx)
    assert guard is not None

    async def one_token_past_the_reservation() -> None:  # the stream's guard asks for an extension, and waits for it
        async with anyio.create_task_group() as tg:
            guard.start(tg)
            await guard.allow(reservation.tokens + 1)

    anyio.run(one_token_past_the_reservation)
    assert reservation.uncertain  # the guard recorded that the write's outcome is unknown
    # WHEN the request is settled
    anyio.run(limits.finalize, ctx, outcome())
    # THEN nothing stays reserved: what is committed is what was spent
    day = "SPEND#D#" + time.strftime("%Y-%m-%d", time.gmtime(ctx.started_epoch))
    committed, reserved, cost = _spend(stores, key.key_id, day)
    assert reserved == 0 and committed == cost == PRICES("gpt-4o-mini", Usage(5, 20))


def test_a_request_started_before_midnight_and_admitted_after_it_settles_where_it_reserved(
    stores: Stores, moto_endpoint: str
) -> None:
    # GIVEN a budgeted request that started 10 ms before a month's end and was admitted 5 ms after it
    key = key_with(daily_budget_usd="10")
    midnight = calendar.timegm((2026, 12, 1, 0, 0, 0))
    limits = limiter(moto_endpoint, stores.table_name, clock=lambda: midnight + 0.005)
    ctx = replace(context(key, "req_" + uuid.uuid4().hex), started_epoch=midnight - 0.010)
    ctx = replace(ctx, ticket=anyio.run(limits.admit, ctx))
    # WHEN it is settled
    anyio.run(limits.finalize, ctx, outcome())
    # THEN its reservation and its cost are on the same day and month (its usage record's), none left anywhere
    cost = PRICES("gpt-4o-mini", Usage(5, 20))
    none = Decimal(0)
    assert _spend(stores, key.key_id, "SPEND#D#2026-11-30") == (cost, none, cost)
    assert _spend(stores, key.key_id, "SPEND#M#2026-11") == (cost, none, cost)
    assert _spend(stores, key.key_id, "SPEND#D#2026-12-01") == (none, none, none)
    assert _spend(stores, key.key_id, "SPEND#M#2026-12") == (none, none, none)


def test_a_reconciler_never_settles_a_request_whose_relay_renewed_its_lease_meanwhile(
    stores: Stores, moto_endpoint: str
) -> None:
    # GIVEN an admitted request whose lease a reconciler finds expired
    key = key_with(max_concurrent=1)
    limits = limiter(moto_endpoint, stores.table_name, lease_s=10)
    anyio.run(limits.admit, context(key, "req_alive"))
    later = time.time() + 60

    class RenewedAfterTheRead(_Wrapped):
        """The relay renews the lease just after the reconciler read the request item."""

        def get_item(self, **kwargs: Any) -> Any:
            out = self._client.get_item(**kwargs)
            stores.requests.renew(int(later) + 600, {"req_alive": None})
            return out

    reconciler = Reconciler(
        Stores.create(stores.table_name, RenewedAfterTheRead(stores.client)),  # type: ignore[arg-type]
        PRICES,
        30,
        clock=lambda: later,
    )
    # WHEN it settles the request THEN it does not: the relay is alive, its request still unfinished
    assert reconciler.settle(["req_alive"]) == [None]
    item = stores.requests.get("req_alive")
    assert item is not None and "finished_at" not in item

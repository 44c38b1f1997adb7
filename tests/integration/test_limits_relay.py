"""Per-key limits end to end, through a real relay on loopback (httpx), DynamoDB on moto: RPM under a burst,
concurrent streams, budgets, cost agreement between the stream summary and the usage record, a relay process
killed mid-stream, and the single DynamoDB round trip admission adds before the upstream call."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pytest

from llm_relay.dynamo import Stores
from llm_relay.keys import ApiKey, generate_key, generate_key_id, hash_key
from llm_relay.limits.rules import day_of
from llm_relay.usage import UsageRecord
from tests.conftest import Relay, RelayFactory, Upstream
from tests.integration.helpers import chat_body, ndjson_lines
from tests.servers import free_port, wait_healthy
from tests.waiting import PATIENCE_S, wait_until

T = TypeVar("T")

SHORT = {"tokens": 3, "chunk_delay_ms": 0, "ttft_ms": 0}


def new_key(stores: Stores, **limits: int | str) -> tuple[str, ApiKey]:
    plain = generate_key()
    key = ApiKey(key_id=generate_key_id(), name="limits-test", limits={k: Decimal(str(v)) for k, v in limits.items()})
    stores.keys.put(key, hash_key(plain))
    return plain, key


def minute_now() -> int:
    return int(time.time() // 60)


def in_one_minute_window(burst: Callable[[], T], attempts: int = 3) -> T:
    """Run `burst` until one run started and ended in the same wall-clock minute (the relay counts RPM in
    minute windows; a run that straddles a boundary is not evidence either way, and is run again)."""
    for _ in range(attempts):
        wait_until(lambda: 60 - time.time() % 60 > 5, "5 s or more before the next minute")
        started = minute_now()
        result = burst()
        if minute_now() == started:
            return result
    raise AssertionError(f"{attempts} runs each straddled a minute boundary")


def records_of(
    stores: Stores, key_id: str, count: int, timeout: float = PATIENCE_S, shards: int = 1
) -> list[UsageRecord]:
    """The key's usage records, once there are `count` of them (finalization of a dropped stream is async);
    what there is after `timeout` otherwise."""
    usage = stores.usage
    deadline = time.monotonic() + timeout
    while True:
        records = usage.for_key(key_id, 0, time.time() + 60, shards)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_rpm_5_admits_exactly_5_of_20_concurrent_and_refuses_15_well_formed(relay: Relay) -> None:
    # GIVEN a key limited to 5 requests per minute
    # WHEN 20 requests arrive at once (within one minute window)
    async def burst(plain: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=40)) as client:
            return await asyncio.gather(
                *[
                    client.post(
                        f"{relay.url}/api/v1/chat/stream", json=chat_body(mock=SHORT), headers=relay.headers(plain)
                    )
                    for _ in range(20)
                ]
            )

    def fresh_key_burst() -> tuple[ApiKey, list[httpx.Response]]:
        plain, key = new_key(relay.stores, rpm=5)
        return key, asyncio.run(burst(plain))

    key, responses = in_one_minute_window(fresh_key_burst)
    # THEN exactly 5 succeed and 15 get a well-formed 429
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert (len(ok), len(refused)) == (5, 15)
    for response in refused:
        assert response.json() == {
            "error": {
                "message": response.json()["error"]["message"],
                "type": "rate_limit_error",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        assert "requests per minute (RPM): limit 5" in response.json()["error"]["message"]
        assert 1 <= int(response.headers["retry-after"]) <= 61
        assert response.headers["x-ratelimit-limit-requests"] == "5"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert response.headers["x-ratelimit-reset-requests"]
        assert response.headers["x-request-id"].startswith("req_")
    # AND the admitted streams carry the headers too, and complete normally
    for response in ok:
        assert response.headers["x-ratelimit-limit-requests"] == "5"
        assert 0 <= int(response.headers["x-ratelimit-remaining-requests"]) <= 4
        assert ndjson_lines(response.text)[-1]["object"] == "relay.summary"
    # AND every one of the 20 has a usage record
    reasons = sorted(r.termination_reason for r in records_of(relay.stores, key.key_id, 20))
    assert reasons == ["rate_limit_exceeded"] * 15 + ["stop"] * 5


def test_third_concurrent_stream_is_refused_until_one_ends(relay: Relay, capfd: pytest.CaptureFixture[str]) -> None:
    # GIVEN a key allowed 2 concurrent streams, and two streams running (one short, one long)
    plain, _ = new_key(relay.stores, max_concurrent=2)
    url = f"{relay.url}/v1/chat/completions"
    short = chat_body(stream=True, mock={"tokens": 5, "chunk_delay_ms": 60, "ttft_ms": 0})
    long = chat_body(stream=True, mock={"tokens": 1000, "chunk_delay_ms": 20, "ttft_ms": 0})
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", url, json=short, headers=relay.headers(plain)) as first,
        client.stream("POST", url, json=long, headers=relay.headers(plain)) as second,
    ):
        assert (first.status_code, second.status_code) == (200, 200)
        # WHEN a third starts: refused, naming the concurrency limit
        third = client.post(url, json=chat_body(stream=True, mock=SHORT), headers=relay.headers(plain))
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        assert "concurrent streams: limit 2" in third.json()["error"]["message"]
        # (Retry-After: the time to the earliest lease expiry, at most one lease away)
        assert 1 <= int(third.headers["retry-after"]) <= relay.settings.lease_s + 1
        # WHEN the short stream ends (its body closes after finalization released the slot)
        assert first.read().endswith(b"data: [DONE]\n\n")
        # THEN the next one is admitted
        again = client.post(url, json=chat_body(stream=True, mock=SHORT), headers=relay.headers(plain))
        assert again.status_code == 200 and again.text.endswith("data: [DONE]\n\n")
        assert second.status_code == 200  # still streaming; closing it cancels it
    # AND the cancelled stream is finalized before the test ends (its metrics, the last thing it prints, would
    # otherwise land outside the test's captured output)
    printed: list[str] = []

    def cancel_counted() -> bool:
        printed.append(capfd.readouterr().out)
        return '"ClientCancelLatency"' in "".join(printed)

    wait_until(cancel_counted, "the cancelled stream's metrics")


def test_budget_stops_the_key_once_spent_and_costs_agree(relay: Relay) -> None:
    # GIVEN a daily budget that covers one request of max_tokens 20 (its worst case: 14 prompt tokens at $0.15/M
    # plus 20 completion tokens of gpt-4o-mini at $0.60/M = $0.0000141) but not two
    plain, key = new_key(relay.stores, daily_budget_usd="0.00002")
    with httpx.Client(timeout=10) as client:
        # WHEN the first request runs: admitted (nothing spent yet)
        first = client.post(
            f"{relay.url}/api/v1/chat/stream",
            headers=relay.headers(plain),
            json=chat_body(max_tokens=20, mock={"tokens": 20, "chunk_delay_ms": 0, "ttft_ms": 0}),
        )
        assert first.status_code == 200
        summary = ndjson_lines(first.text)[-1]
        # THEN the summary's cost and the usage record's cost are the same Decimal
        record = records_of(relay.stores, key.key_id, 1)[0]
        assert record.cost_usd is not None and record.cost_usd == Decimal(summary["cost_usd"]) > Decimal("0.00001")
        assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
            summary["usage"]["prompt_tokens"],
            20,
            "upstream",
        )
        # AND the day's spend holds it
        spend = relay.stores.usage.spend(key.key_id, "D#" + day_of(record.started_epoch))  # its start's day
        assert spend["cost_usd"] == record.cost_usd
        # WHEN the next request comes: refused with budget_exceeded until the day ends
        to_midnight_before = 86400 - time.time() % 86400
        second = client.post(
            f"{relay.url}/v1/chat/completions", json=chat_body(max_tokens=20), headers=relay.headers(plain)
        )
        to_midnight_after = 86400 - time.time() % 86400
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "budget_exceeded"
    assert "daily budget" in second.json()["error"]["message"]
    # (the relay's "now" lies between the two readings; whole seconds, rounded either way)
    assert to_midnight_after - 1 <= int(second.headers["retry-after"]) <= to_midnight_before + 1


def test_admission_adds_one_dynamodb_round_trip_before_the_upstream(relay: Relay, upstream: Upstream) -> None:
    # GIVEN a key with every limit set, and the auth cache warm
    plain, _ = new_key(relay.stores, rpm=100, tpm=100000, max_concurrent=5, daily_budget_usd=10, monthly_budget_usd=100)
    calls: list[tuple[float, str]] = []
    with httpx.Client(timeout=10) as client:
        assert (
            client.post(
                f"{relay.url}/v1/chat/completions", json=chat_body(mock=SHORT), headers=relay.headers(plain)
            ).status_code
            == 200
        )
        relay.stores.client.meta.events.register(
            "before-call.dynamodb.*", lambda model, **kw: calls.append((time.monotonic(), model.name))
        )
        # WHEN a request is relayed
        sent = time.monotonic()
        response = client.post(
            f"{relay.url}/v1/chat/completions", json=chat_body(mock=SHORT), headers=relay.headers(plain)
        )
    # THEN exactly one DynamoDB call happened between its arrival and the upstream call: the admission write
    # (BatchGetItem is the process's cancel poller, which reads every running stream's mark each interval)
    upstream_started = upstream.state.requests[response.headers["x-request-id"]].started_at
    before_upstream = [name for at, name in calls if sent <= at <= upstream_started and name != "BatchGetItem"]
    assert before_upstream == ["TransactWriteItems"]


# The killed relay's lease: long enough that the kill and the first refused request fit inside it on a loaded
# machine (at 3 s, a CI run spent them before the refusal was asked for, and the slot was already free).
KILLED_LEASE_S = 6


@pytest.mark.slow
def test_a_killed_relay_process_holds_its_slot_no_longer_than_the_lease(
    make_relay: RelayFactory, stores: Stores, upstream: Upstream, moto_endpoint: str
) -> None:
    # GIVEN a key with one concurrent stream, served by a separate relay process whose leases last 6 s, and a
    # second relay ready to take over
    plain, _ = new_key(stores, max_concurrent=1)
    relay = make_relay(lease_s=KILLED_LEASE_S)
    port = free_port()
    env = {
        **os.environ,
        "RELAY_DYNAMODB_ENDPOINT": moto_endpoint,
        "RELAY_TABLE_NAME": stores.table_name,
        "RELAY_DEV_KEY": plain,
        "PORT": str(port),
        "RELAY_UPSTREAM_URL": upstream.url,
        "RELAY_LEASE_S": str(KILLED_LEASE_S),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_relay_dev.devserver"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", alive=lambda: process.poll() is None)
        sent_at = time.time()  # the lease starts after this
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                "POST",
                f"http://127.0.0.1:{port}/v1/chat/completions",
                headers={"authorization": f"Bearer {plain}"},
                json=chat_body(stream=True, mock={"tokens": 1000, "chunk_delay_ms": 20, "ttft_ms": 0}),
            ) as stream,
        ):
            assert stream.status_code == 200
            admitted_at = time.time()
            next(stream.iter_lines())
            # WHEN the process is killed mid-stream (no finalization, the slot is never released)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    finally:
        process.kill()
    # THEN another relay refuses the key while the lease runs, and admits it once the lease expired
    body = chat_body(mock=SHORT)
    with httpx.Client(timeout=10) as client:
        refused = client.post(f"{relay.url}/v1/chat/completions", json=body, headers=relay.headers(plain))
        assert refused.status_code == 429

        def admitted() -> bool:
            ok = client.post(f"{relay.url}/v1/chat/completions", json=body, headers=relay.headers(plain))
            return ok.status_code == 200

        wait_until(admitted, "the dead stream's slot reclaimed", interval=0.2)
    reclaimed_at = time.time()
    # (not before the lease ran out; after it, within a poll and a loaded machine's slack)
    assert reclaimed_at - sent_at >= KILLED_LEASE_S - 0.1, reclaimed_at - sent_at
    assert reclaimed_at - admitted_at < KILLED_LEASE_S + 2.0, reclaimed_at - admitted_at


def _cli(args: list[str], relay: Relay) -> Any:
    env = {
        **os.environ,
        "RELAY_DYNAMODB_ENDPOINT": relay.settings.dynamodb_endpoint or "",
        "RELAY_TABLE_NAME": relay.stores.table_name,
    }
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "llm-relay"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_usage_cli_shows_every_request_cancelled_ones_with_estimated_tokens(relay: Relay) -> None:
    # GIVEN a key, and four requests: one completed, one cancelled by the explicit cancel call, one whose
    # client went away, one refused by a limit
    plain, key = new_key(relay.stores, tpm=5000)
    long = chat_body(stream=True, mock={"tokens": 1000, "chunk_delay_ms": 10, "ttft_ms": 0})
    url = f"{relay.url}/v1/chat/completions"
    with httpx.Client(timeout=10) as client:
        assert client.post(url, json=chat_body(mock=SHORT), headers=relay.headers(plain)).status_code == 200
        with client.stream("POST", url, json=long, headers=relay.headers(plain)) as cancelled:
            lines = cancelled.iter_lines()
            next(lines)
            request_id = cancelled.headers["x-request-id"]
            assert (
                client.post(f"{relay.url}/v1/requests/{request_id}/cancel", headers=relay.headers(plain)).status_code
                == 202
            )
            for _ in lines:
                pass
        with client.stream("POST", url, json=long, headers=relay.headers(plain)) as dropped:
            dropped_lines = dropped.iter_lines()
            next(dropped_lines)
            next(dropped_lines)
        assert client.post(url, json=chat_body(max_tokens=9000), headers=relay.headers(plain)).status_code == 429
    records_of(relay.stores, key.key_id, 4)
    # WHEN the usage CLI reads the key's usage
    result = _cli(["usage", "--key", key.key_id, "--json"], relay)
    assert result.returncode == 0, result.stderr
    usage = json.loads(result.stdout)
    # THEN every request is there, the cancelled ones with estimated tokens
    by_reason = sorted((r["termination_reason"], r["usage_source"]) for r in usage["records"])
    assert by_reason == [
        ("client_cancelled", "estimated"),
        ("client_cancelled", "estimated"),
        ("rate_limit_exceeded", "none"),
        ("stop", "upstream"),
    ]
    for record in usage["records"]:
        if record["termination_reason"] == "client_cancelled":
            assert record["completion_tokens"] >= 1 and record["prompt_tokens"] >= 1
            assert Decimal(record["cost_usd"]) > 0
    assert usage["totals"]["requests"] == 4 and usage["totals"]["estimated_requests"] == 2
    assert usage["totals"]["termination_reasons"] == {"client_cancelled": 2, "rate_limit_exceeded": 1, "stop": 1}
    # AND the readable table marks the estimates
    table = _cli(["usage", "--key", key.key_id], relay)
    assert table.returncode == 0 and table.stdout.count("(est)") == 4 and "client_cancelled" in table.stdout
    assert "requests 4" in table.stdout

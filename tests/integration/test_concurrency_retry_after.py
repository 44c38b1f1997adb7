"""A concurrency refusal's `Retry-After` is honest: short while the slot's holder is a live stream (its renewed lease
says when a crashed holder would be reclaimed, not when a live one ends), the lease's expiry once its holder stopped
renewing it. Through a real relay and the openai SDK with its default retries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import openai

from llm_relay.dynamo import Stores
from llm_relay.limits.rules import LIVE_HOLDER_RETRY_MS
from tests.conftest import Relay, RelayFactory, Upstream
from tests.integration.helpers import chat_body
from tests.integration.test_limits_relay import new_key
from tests.servers import free_port, wait_healthy
from tests.waiting import PATIENCE_S, wait_until

SHORT = {"tokens": 3, "chunk_delay_ms": 0, "ttft_ms": 0}
HOLD = {"tokens": 30, "chunk_delay_ms": 100, "ttft_ms": 0}  # about 3 s


def _hold_the_slot(relay: Relay, plain: str, freed: dict[str, float]) -> threading.Thread:
    """Stream an answer of about 3 s in the background; `freed["at"]`: when its body closed (its slot given back
    before that, by finalization)."""
    first_chunk = threading.Event()

    def hold() -> None:
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST",
                f"{relay.url}/v1/chat/completions",
                json=chat_body(stream=True, mock=HOLD),
                headers=relay.headers(plain),
            ) as response,
        ):
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    first_chunk.set()
        freed["at"] = time.monotonic()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert first_chunk.wait(PATIENCE_S), "the holding stream did not start"
    return thread


def test_the_openai_sdk_gets_a_slot_freed_3_s_later_within_seconds_not_a_lease_later(relay: Relay) -> None:
    # GIVEN a key with one concurrent stream (leases of the default 60 s), held by a live stream for about 3 s
    plain, key = new_key(relay.stores, max_concurrent=1)
    freed: dict[str, float] = {}
    holder = _hold_the_slot(relay, plain, freed)
    # WHEN the openai SDK, with its default retries (2, honouring Retry-After), asks for a completion meanwhile
    answer: dict[str, Any] = {}

    def ask() -> None:
        with openai.OpenAI(base_url=f"{relay.url}/v1", api_key=plain, timeout=10) as client:
            completion = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}], extra_body={"mock": SHORT}
            )
        answer.update(done_at=time.monotonic(), completion=completion)

    asked_at = time.monotonic()
    threading.Thread(target=ask, daemon=True).start()  # a regression sleeps a whole lease: never waited for
    holder.join(PATIENCE_S)
    # THEN it has its answer a few seconds after the slot was freed, not a lease (60 s) later
    wait_until(lambda: "done_at" in answer, "the SDK's completion", timeout=20)
    assert answer["completion"].choices[0].finish_reason == "stop"
    assert answer["done_at"] - freed["at"] < 2 * LIVE_HOLDER_RETRY_MS / 1000 + 1.5, (asked_at, freed, answer)
    # AND it was refused while the slot was held (its first attempt is on the key's record as refused)
    records = relay.stores.usage.for_key(key.key_id, 0, time.time() + 60)
    assert "rate_limit_exceeded" in [record.termination_reason for record in records]


def test_a_holder_that_stopped_renewing_is_waited_for_until_its_lease_expires(
    make_relay: RelayFactory, stores: Stores, upstream: Upstream, moto_endpoint: str
) -> None:
    # GIVEN a key with one concurrent stream, held by a relay process (12 s leases, renewed every 4 s) that is killed
    # mid-stream: its lease is never renewed again
    plain, key = new_key(stores, max_concurrent=1)
    relay = make_relay(lease_s=12)
    port = free_port()
    env = {
        **os.environ,
        "RELAY_DYNAMODB_ENDPOINT": moto_endpoint,
        "RELAY_TABLE_NAME": stores.table_name,
        "RELAY_DEV_KEY": plain,
        "PORT": str(port),
        "RELAY_UPSTREAM_URL": upstream.url,
        "RELAY_LEASE_S": "12",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_relay_dev.devserver"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", alive=lambda: process.poll() is None)
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
            next(stream.iter_lines())
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    finally:
        process.kill()
    # WHEN its lease has less than half left (no renewal for a round and a half) and another request of the key comes
    (held,) = stores.requests.earliest_leases(key.key_id)
    wait_until(lambda: held[1] - time.time() <= 5, "the dead holder's lease under half", timeout=PATIENCE_S)
    with httpx.Client(timeout=10) as client:
        refused = client.post(
            f"{relay.url}/v1/chat/completions", json=chat_body(mock=SHORT), headers=relay.headers(plain)
        )
    answered_at = time.time()
    # THEN it is refused with Retry-After the time to that expiry, when the slot can come back
    assert refused.status_code == 429
    retry_ms = int(refused.headers["retry-after-ms"])
    assert abs(answered_at + retry_ms / 1000 - held[1]) <= 1.0, (retry_ms, held[1] - answered_at)

"""An upstream that sends events again (a retrying proxy, a replay after a reconnect) where it numbers them: the
relay drops each resent event before the client and the meter see it, in every format and `stream: false`, and
counts them on the usage record."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import Relay
from tests.integration.helpers import chat_body, ndjson_lines, sse_events
from tests.integration.test_limits_relay import records_of
from tests.waiting import wait_until

RESEND = {"tokens": 9, "chunk_delay_ms": 0, "ttft_ms": 0, "resend_every": 3}  # 3 of the 9 text events sent twice
TEXT = "The quick brown fox jumps over the lazy dog"


def _record(relay: Relay, request_id: str) -> Any:
    def found() -> list[Any]:
        return [r for r in records_of(relay.stores, relay.api_key.key_id, 0, timeout=0) if r.request_id == request_id]

    return wait_until(found, f"the record of {request_id}")[0]


@pytest.mark.parametrize("mode", ["sse", "ndjson", "json"])
def test_events_resent_with_their_sse_id_are_dropped_and_counted(relay: Relay, mode: str) -> None:
    path = "/api/v1/chat/stream" if mode == "ndjson" else "/v1/chat/completions"
    body = chat_body(mock=RESEND, stream=mode == "sse", stream_options={"include_usage": True})
    answer = httpx.post(f"{relay.url}{path}", json=body, headers=relay.headers(), timeout=30)
    if mode == "sse":
        chunks = [json.loads(data) for data in sse_events(answer.text) if data.startswith("{")]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        completion = next(c["usage"]["completion_tokens"] for c in chunks if c.get("usage"))
    elif mode == "ndjson":
        lines = ndjson_lines(answer.text)
        text = "".join(line["choices"][0]["delta"].get("content") or "" for line in lines[:-1] if line["choices"])
        completion = lines[-1]["usage"]["completion_tokens"]
    else:
        text = answer.json()["choices"][0]["message"]["content"]
        completion = answer.json()["usage"]["completion_tokens"]
    # THEN the client reads each word once, and the record counts the three resent events it dropped
    assert (text, completion) == (TEXT, 9)
    assert _record(relay, answer.headers["x-request-id"]).repeated_events == 3


def test_responses_events_resent_with_their_sequence_number_are_dropped_and_counted(relay: Relay) -> None:
    body = {"model": "gpt-4o-mini", "input": "Hello", "instructions": f"mock: {json.dumps(RESEND)}", "stream": True}
    answer = httpx.post(f"{relay.url}/v1/responses", json=body, headers=relay.headers(), timeout=30)
    events = [json.loads(line[len("data: ") :]) for line in answer.text.splitlines() if line.startswith("data: {")]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == TEXT and len(deltas) == 9
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert _record(relay, answer.headers["x-request-id"]).repeated_events == 3

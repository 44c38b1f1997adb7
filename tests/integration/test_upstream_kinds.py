"""Every kind of upstream through the relay, end to end: one relay routes a model to each (RELAY_UPSTREAMS) — the
OpenAI-shaped SSE mock, the Ollama-shaped NDJSON mock, the mock streaming this relay's own NDJSON, and the local
Bedrock ConverseStream server (SigV4-signed, AWS event-stream framing) — and a client cannot tell them apart:
same text, usage, records, metrics, budgets and cancellation. Faults are asked of every upstream the same way,
with a `mock:` system message (the relay refuses unknown fields for Ollama and Bedrock)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llm_relay.dynamo import Stores
from llm_relay_dev.bedrock_local import create_bedrock_app
from llm_relay_dev.mock_upstream import WORDS, create_mock_app
from tests.conftest import Relay, RelayFactory
from tests.integration.devserver_support import DevServer, dev_server
from tests.integration.helpers import ndjson_lines, sse_events
from tests.integration.test_budgets import assert_settled
from tests.integration.test_cancel import LOADED_MACHINE_SLACK_S
from tests.integration.test_limits_relay import new_key, records_of
from tests.servers import serve
from tests.waiting import wait_until

MODELS = {"openai": "gpt-4o-mini", "ollama": "llama3.2", "ndjson": "inhouse-1", "bedrock": "amazon.nova-lite-v1:0"}
KINDS = list(MODELS)
# Every model at gpt-4o-mini's price, so one answer costs the same whatever answered it.
PRICE = {"input": "0.15", "output": "0.60"}
DEAR = {"input": "1.50", "output": "6.00"}  # ten times PRICE
PRICES = json.dumps({"models": {**{model: PRICE for model in MODELS.values()}, "pricey-1": PRICE, "dear-model": DEAR}})
SHORT = {"tokens": 12, "chunk_delay_ms": 1, "ttft_ms": 5}
LONG = {"tokens": 1000, "chunk_delay_ms": 20, "ttft_ms": 0}  # 20 s: it never ends by itself in a test
TEXT = "".join(WORDS[i % len(WORDS)] for i in range(12))
PROMPT = "Hello there, relay"  # 18 characters: 4 prompt tokens as every mock counts them


@dataclass
class Upstreams:
    mock: str  # the mock's root: SSE under /v1, Ollama's /api/chat, this relay's NDJSON at /ndjson/chat
    bedrock: str  # the local Bedrock server (its endpoint_url)
    always_503: str  # an OpenAI-shaped server that answers 503 to everything

    def table(self) -> list[dict[str, Any]]:
        return [
            {"name": "openai", "kind": "openai", "url": f"{self.mock}/v1", "models": ["gpt-*"]},
            {"name": "ollama", "kind": "ollama", "url": self.mock, "models": ["llama*"]},
            {"name": "ndjson", "kind": "ndjson", "url": f"{self.mock}/ndjson/chat", "models": ["inhouse-*"]},
            {"name": "bedrock", "kind": "bedrock", "url": self.bedrock, "region": "us-east-1", "models": ["amazon.*"]},
            # fallbacks: a primary that answers 503 before any byte, and one that fails after its first bytes
            {
                "name": "down",
                "kind": "openai",
                "url": f"{self.always_503}/v1",
                "models": ["down-*"],
                "fallbacks": ["to-bedrock"],
            },
            {
                "name": "mid",
                "kind": "openai",
                "url": f"{self.mock}/v1",
                "models": ["mid-*"],
                "fallbacks": ["to-bedrock"],
            },
            # a cheap model whose fallback sends a dearer one
            {
                "name": "down-cheap",
                "kind": "openai",
                "url": f"{self.always_503}/v1",
                "models": ["pricey-*"],
                "fallbacks": ["to-dear"],
            },
            {"name": "to-dear", "kind": "openai", "url": f"{self.mock}/v1", "models": [], "rewrite": "dear-model"},
            {
                "name": "to-bedrock",
                "kind": "bedrock",
                "url": self.bedrock,
                "region": "us-east-1",
                "models": [],
                "rewrite": MODELS["bedrock"],
            },
        ]

    def record(self, kind: str, request_id: str) -> dict[str, Any] | None:
        """What the upstream of `kind` recorded of the request (None: it never saw it)."""
        base = self.bedrock if kind in ("bedrock", "to-bedrock") else self.mock
        answer = httpx.get(f"{base}/mock/requests/{request_id}", timeout=5)
        return answer.json() if answer.status_code == 200 else None


def _always_503() -> Starlette:
    async def chat(request: Request) -> Response:
        return JSONResponse({"error": {"message": "down for maintenance"}}, status_code=503)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    with serve(create_mock_app()) as mock, serve(create_bedrock_app()) as bedrock, serve(_always_503()) as down:
        yield Upstreams(mock, bedrock, down)


@pytest.fixture
def routed(make_relay: RelayFactory, upstreams: Upstreams) -> Relay:
    return make_relay(upstream_url=None, upstreams=json.dumps(upstreams.table()), prices_json=PRICES)


def body(model: str, faults: dict[str, Any], **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": f"mock: {json.dumps(faults)}"}, {"role": "user", "content": PROMPT}]
    return {"model": model, "messages": messages, **extra}


def record_of(relay: Relay, request_id: str, key_id: str | None = None) -> Any:
    key_id = key_id or relay.api_key.key_id
    found = wait_until(
        lambda: [r for r in records_of(relay.stores, key_id, 0, timeout=0) if r.request_id == request_id],
        f"the usage record of {request_id}",
    )
    return found[0]


# --- same answer, whatever answered it -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_openai_sdk_gets_the_same_text_usage_record_and_metrics_from_every_kind(
    routed: Relay,
    kind: str,
    capsys: pytest.CaptureFixture[str],
    closing: ExitStack,
) -> None:
    # GIVEN the openai SDK pointed at the relay, and a model routed to this kind of upstream
    client = closing.enter_context(openai.OpenAI(base_url=f"{routed.url}/v1", api_key=routed.key, max_retries=0))
    # WHEN it streams an answer with usage
    stream = client.chat.completions.with_raw_response.create(
        **body(MODELS[kind], SHORT), stream=True, stream_options={"include_usage": True}
    )
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    # THEN the text, the finish and the upstream's own usage are the same for every kind
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    assert text == TEXT
    assert finishes == ["stop"]
    assert len(usage) == 1 and (usage[0].prompt_tokens, usage[0].completion_tokens) == (4, 12)
    assert {c.id for c in chunks} == {request_id}
    assert {c.model for c in chunks if c.choices} <= {MODELS[kind]}
    # AND the record names the upstream, counts what it reported, and costs the same
    record = record_of(routed, request_id)
    assert (record.upstream, record.termination_reason, record.usage_source) == (kind, "stop", "upstream")
    assert (record.prompt_tokens, record.completion_tokens) == (4, 12)
    assert record.cost_usd == Decimal("0.0000078")  # 4 x 0.15/M + 12 x 0.60/M
    # AND the metrics are those of any stream: its reason, and its figures under the model (telemetry finalizes
    # after the record is written: wait for its documents)
    emf: list[dict[str, Any]] = []

    def figures() -> list[dict[str, Any]]:
        out = capsys.readouterr().out
        emf.extend(json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"'))
        return [doc for doc in emf if "CompletionTokens" in doc and doc.get("model") == MODELS[kind]]

    [figure] = wait_until(figures, "the stream's EMF figures")
    assert figure["CompletionTokens"] == [12.0] and figure["CostUSD"] == [7.8e-06]
    assert any(doc.get("StreamsTerminated") == [1.0] and doc.get("reason") == "stop" for doc in emf)


@pytest.mark.parametrize("kind", KINDS)
def test_the_ndjson_endpoint_and_stream_false_get_the_same_answer_from_every_kind(routed: Relay, kind: str) -> None:
    with httpx.Client(timeout=30) as client:
        # WHEN the NDJSON endpoint streams the model
        answer = client.post(
            f"{routed.url}/api/v1/chat/stream", json=body(MODELS[kind], SHORT), headers=routed.headers()
        )
        # AND a stream: false request asks for one body
        whole = client.post(
            f"{routed.url}/v1/chat/completions", json=body(MODELS[kind], SHORT), headers=routed.headers()
        )
    # THEN NDJSON has the text, then the summary with the upstream's usage
    lines = ndjson_lines(answer.text)
    assert (
        "".join(line["choices"][0]["delta"].get("content") or "" for line in lines[:-1] if line.get("choices")) == TEXT
    )
    summary = lines[-1]
    assert (summary["object"], summary["termination_reason"]) == ("relay.summary", "stop")
    assert (
        summary["usage"]["prompt_tokens"],
        summary["usage"]["completion_tokens"],
        summary["usage"]["estimated"],
    ) == (
        4,
        12,
        False,
    )
    # AND the one JSON body is the assembled completion
    assert whole.status_code == 200, whole.text
    completion = whole.json()
    assert completion["choices"][0]["message"]["content"] == TEXT
    assert completion["usage"]["completion_tokens"] == 12


# --- cancel closes every kind of upstream ------------------------------------------------------------------------


def _read_three_chunks(response: httpx.Response) -> Iterator[str]:
    """Read the first three chunks; the body's line iterator, to read the rest from (a body is read once)."""
    lines = response.iter_lines()
    received = 0
    while received < 3:
        if next(lines).startswith(("data: {", "{")):
            received += 1
    return lines


@pytest.mark.parametrize("kind", KINDS)
def test_a_disconnect_closes_every_kind_of_upstream(routed: Relay, upstreams: Upstreams, kind: str) -> None:
    # GIVEN a long answer streaming from this kind of upstream
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{routed.url}/v1/chat/completions",
            json=body(MODELS[kind], LONG, stream=True),
            headers=routed.headers(),
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        _read_three_chunks(response)
        # WHEN the client drops the connection
        response.close()
        closed_at = time.monotonic()
    # THEN the relay closes the upstream request at once (the upstream, a server in this process on the same clock,
    # sees it go within the bound test_cancel.py holds the openai kind to) and records client_cancelled
    seen = wait_until(lambda: (upstreams.record(kind, request_id) or {}).get("disconnected_at"), "upstream closed")
    assert seen - closed_at < LOADED_MACHINE_SLACK_S, f"{kind}: upstream closed {(seen - closed_at) * 1000:.0f} ms late"
    record = record_of(routed, request_id)
    assert (record.termination_reason, record.cancel_source, record.upstream) == (
        "client_cancelled",
        "disconnect",
        kind,
    )
    assert upstreams.record(kind, request_id)["chunks_sent"] < 1000  # type: ignore[index]


@pytest.mark.parametrize("kind", KINDS)
def test_the_cancel_call_closes_every_kind_of_upstream(routed: Relay, upstreams: Upstreams, kind: str) -> None:
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{routed.url}/api/v1/chat/stream", json=body(MODELS[kind], LONG), headers=routed.headers()
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        lines = _read_three_chunks(response)
        # WHEN the client asks the relay to cancel, by the request's id, while it keeps reading
        cancel = client.post(f"{routed.url}/v1/requests/{request_id}/cancel", headers=routed.headers())
        assert cancel.status_code == 202, cancel.text
        rest = [json.loads(line) for line in lines if line.strip()]
    # THEN the stream ends with the summary line of a cancelled stream, the upstream is closed, the record says why
    assert (rest[-1]["object"], rest[-1]["termination_reason"]) == ("relay.summary", "client_cancelled")
    wait_until(lambda: (upstreams.record(kind, request_id) or {}).get("disconnected_at"), "upstream closed")
    record = record_of(routed, request_id)
    assert (record.termination_reason, record.cancel_source) == ("client_cancelled", "cancel_call")


# --- what each kind does wrong ends right ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fault", "reason", "message"),
    [
        ("ollama", {"malformed_after": 3}, "upstream_error", "malformed"),
        ("ndjson", {"malformed_after": 3}, "upstream_error", "malformed"),
        ("ollama", {"error_after": 3}, "upstream_error", "Upstream error"),
        ("ndjson", {"error_after": 3}, "upstream_error", "Upstream error"),
        ("ollama", {"no_finish": True}, "incomplete", None),
        ("ndjson", {"no_finish": True}, "incomplete", None),
        ("bedrock", {"exception_after": 3}, "upstream_error", "modelStreamErrorException"),
        ("bedrock", {"cut_before_stop": True}, "incomplete", None),
        ("bedrock", {"no_metadata": True}, "incomplete", None),
    ],
)
def test_a_broken_stream_of_each_kind_ends_with_the_right_error_and_reason(
    routed: Relay, kind: str, fault: dict[str, Any], reason: str, message: str | None
) -> None:
    # GIVEN an upstream of this kind that breaks its stream after a few tokens
    faults = {**SHORT, **fault}
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{routed.url}/v1/chat/completions", json=body(MODELS[kind], faults, stream=True), headers=routed.headers()
        )
    # THEN the SSE client gets the terminal error event with the reason as its code, and no [DONE]
    events = sse_events(answer.text)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == reason
    if message is not None:
        assert message in error["message"]
    # AND the record has the same reason
    record = record_of(routed, answer.headers["x-request-id"])
    assert (record.termination_reason, record.upstream) == (reason, kind)


# --- fallbacks ----------------------------------------------------------------------------------------------------


def test_a_fallback_answers_when_the_first_upstream_answers_503_before_any_byte(
    routed: Relay, upstreams: Upstreams
) -> None:
    # GIVEN a model whose upstream answers 503 to every attempt, with a Bedrock fallback
    with httpx.Client(timeout=30) as client:
        answer = client.post(f"{routed.url}/api/v1/chat/stream", json=body("down-1", SHORT), headers=routed.headers())
    # THEN the fallback's answer reached the client, and the record names it and counts the failed attempts
    lines = ndjson_lines(answer.text)
    assert lines[-1]["termination_reason"] == "stop"
    record = record_of(routed, answer.headers["x-request-id"])
    assert (record.upstream, record.completion_tokens) == ("to-bedrock", 12)
    assert upstreams.record("to-bedrock", answer.headers["x-request-id"]) is not None


def test_no_fallback_once_the_first_upstream_sent_its_first_bytes(routed: Relay, upstreams: Upstreams) -> None:
    # GIVEN a model whose upstream drops the connection after two chunks, with a fallback
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{routed.url}/api/v1/chat/stream", json=body("mid-1", {**SHORT, "drop_after": 2}), headers=routed.headers()
        )
    # THEN the stream fails as upstream_error and the fallback was never asked
    request_id = answer.headers["x-request-id"]
    assert ndjson_lines(answer.text)[-1]["error"]["code"] == "upstream_error"
    record = record_of(routed, request_id)
    assert (record.termination_reason, record.upstream) == ("upstream_error", "mid")
    assert upstreams.record("to-bedrock", request_id) is None


def test_an_answer_from_a_dearer_fallback_is_billed_and_reserved_at_its_price(
    routed: Relay, upstreams: Upstreams, stores: Stores
) -> None:
    # GIVEN a cheap model whose upstream is down, and a fallback that sends a model ten times dearer
    plain, key = new_key(stores, daily_budget_usd="1", monthly_budget_usd="10")
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{routed.url}/api/v1/chat/stream", json=body("pricey-1", SHORT), headers=routed.headers(plain)
        )
    # THEN the fallback's answer is billed at the dearer model's price, and the ledger settles to it exactly
    lines = ndjson_lines(answer.text)
    assert lines[-1]["termination_reason"] == "stop"
    assert {line["model"] for line in lines[:-1]} == {"pricey-1"}  # the name asked for, not the fallback's
    record = record_of(routed, answer.headers["x-request-id"], key.key_id)
    assert (record.upstream, record.model) == ("to-dear", "pricey-1")
    assert record.cost_usd == Decimal("0.000078")  # 4 x 1.50/M + 12 x 6.00/M
    assert assert_settled(stores, key.key_id, [record]) == Decimal("0.000078")


def test_admission_reserves_at_the_dearest_model_that_may_answer(routed: Relay, stores: Stores) -> None:
    # GIVEN a budget that covers the cheap model's first reservation (1024 tokens at 0.60/M) but not the dearer
    # fallback's (at 6.00/M)
    plain, _ = new_key(stores, daily_budget_usd="0.002", monthly_budget_usd="1")
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{routed.url}/api/v1/chat/stream", json=body("pricey-1", SHORT), headers=routed.headers(plain)
        )
        cheap = client.post(
            f"{routed.url}/api/v1/chat/stream", json=body(MODELS["openai"], SHORT), headers=routed.headers(plain)
        )
    # THEN it is refused before anything is sent, as the fallback could overspend it
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "budget_exceeded"
    # AND the same budget admits a model at the cheap price with no dearer fallback
    assert cheap.status_code == 200


# --- budgets hold for every kind ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_budget_cuts_every_kind_of_stream_and_the_ledger_settles(
    make_relay: RelayFactory, upstreams: Upstreams, stores: Stores, kind: str
) -> None:
    # GIVEN increments of 50 tokens and a key whose budget covers only a few of them
    relay = make_relay(
        upstream_url=None, upstreams=json.dumps(upstreams.table()), prices_json=PRICES, budget_increment_tokens=50
    )
    budget = Decimal("0.0001")
    plain, key = new_key(stores, daily_budget_usd=str(budget), monthly_budget_usd="1")
    # WHEN it streams a 1000-token answer from this kind of upstream, without max_tokens
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{relay.url}/v1/chat/completions",
            json=body(MODELS[kind], LONG | {"chunk_delay_ms": 1}, stream=True),
            headers=relay.headers(plain),
        )
    # THEN the stream ends with budget_exceeded, the upstream was closed long before its end, and the ledger holds
    # no reservation and no more than the budget
    assert json.loads(sse_events(answer.text)[-1])["error"]["code"] == "budget_exceeded"
    request_id = answer.headers["x-request-id"]
    record = record_of(relay, request_id, key.key_id)
    assert (record.termination_reason, record.upstream) == ("budget_exceeded", kind)
    assert 0 < record.completion_tokens < 1000
    assert assert_settled(stores, key.key_id, [record]) <= budget
    wait_until(lambda: (upstreams.record(kind, request_id) or {}).get("disconnected_at"), "upstream closed")
    assert upstreams.record(kind, request_id)["chunks_sent"] < 1000  # type: ignore[index]


# --- make dev ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev() -> Iterator[DevServer]:
    with dev_server() as server:
        yield server


@pytest.mark.parametrize("model", ["llama3.2", "inhouse-1", "amazon.nova-lite-v1:0", "gpt-4o-mini"])
def test_make_dev_routes_a_model_to_each_kind_of_upstream(dev: DevServer, model: str) -> None:
    # GIVEN `make dev` with no upstream given: it routes a model to each kind, and its banner says which
    dev.wait_for_output("upstreams (mock upstream and local Bedrock in this process):")
    directive = {"role": "system", "content": 'mock: {"tokens": 4, "chunk_delay_ms": 1}'}
    # WHEN the key it printed streams each model
    answer = httpx.post(
        f"{dev.url}/api/v1/chat/stream",
        json={"model": model, "messages": [directive, {"role": "user", "content": "Hello"}]},
        headers={"authorization": f"Bearer {dev.key}"},
        timeout=30,
    )
    # THEN each answers the same words, and its log line names the upstream of its kind
    lines = [json.loads(line) for line in answer.text.splitlines() if line.strip()]
    assert "".join(line["choices"][0]["delta"].get("content") or "" for line in lines[:-1]) == "The quick brown fox"
    assert lines[-1]["termination_reason"] == "stop"
    kind = {"llama3.2": "ollama", "inhouse-1": "ndjson", "amazon.nova-lite-v1:0": "bedrock"}.get(model, "openai")
    assert dev.wait_finished(answer.headers["x-request-id"])["upstream"].startswith(kind)


# --- the compliance gate is upstream-blind ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_carries_a_redaction_in_both_formats(
    make_relay: RelayFactory,
    upstreams: Upstreams,
    kind: str,
    closing: ExitStack,
) -> None:
    from tests.integration.test_sanitize_relay import ANSWER, EXPECTED

    # GIVEN a relay that redacts answers, routing to every kind, and an answer with values split across chunks
    relay = make_relay(
        upstream_url=None, upstreams=json.dumps(upstreams.table()), prices_json=PRICES, sanitize="redact"
    )
    faults = {"text": ANSWER, "chunk_chars": 3, "chunk_delay_ms": 0, "ttft_ms": 0}
    client = closing.enter_context(openai.OpenAI(base_url=f"{relay.url}/v1", api_key=relay.key, max_retries=0))
    # WHEN the openai SDK streams it, and a client reads the NDJSON stream
    stream = client.chat.completions.create(stream=True, **body(MODELS[kind], faults))
    sdk_text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    ndjson = httpx.post(f"{relay.url}/api/v1/chat/stream", json=body(MODELS[kind], faults), headers=relay.headers())
    lines = ndjson_lines(ndjson.text)
    # THEN both read exactly the redacted answer, and the summary counts what was caught
    assert sdk_text == EXPECTED
    assert "".join(line["choices"][0]["delta"].get("content") or "" for line in lines[:-1]) == EXPECTED
    assert lines[-1]["redactions"] == {"EMAIL": 1, "PHONE_NUMBER": 1, "CREDIT_CARD": 1, "IP_ADDRESS": 1}

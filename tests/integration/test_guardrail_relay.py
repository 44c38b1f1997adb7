"""The Bedrock guardrail through a real relay: the relay's own botocore client calls `ApplyGuardrail` on the local
Bedrock server (loopback, its default rules: the denied topic "Investment advice", the names "Jane Doe" and "John
Smith" anonymized as `{NAME}`), on the prompt before admission and on the answer in windows, in sync and async
modes, failing closed or open, alone and behind the pattern sanitizer. Each test is bounded (`anyio.fail_after`,
client timeouts) and waits for what it checks, never for a time."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import openai
import pytest

from llm_relay.outcome import StreamOutcome
from llm_relay.sanitize.windows import WindowRule, split_windows
from llm_relay_dev.guardrail_local import DEFAULT_RULES, GuardrailCall
from tests.conftest import Relay, RelayFactory, Upstream
from tests.integration.guardrail_support import LocalBedrock as Local
from tests.integration.guardrail_support import local_bedrock, use_static_credentials
from tests.integration.helpers import RecordingFinalizer, chat_body, ndjson_lines, sse_events
from tests.waiting import PATIENCE_S, wait_until

pytestmark = pytest.mark.anyio

WINDOW = 50  # the default `guardrail_window_chars`
CLIENT_TIMEOUT = httpx.Timeout(10.0)
SLOW_MS = 30_000.0  # a `guardrail:slow` answer is held this long unless the relay gives up first (it always does)
SSE, NDJSON = "/v1/chat/completions", "/api/v1/chat/stream"

# Two clean windows (each sentence is one window: at least WINDOW characters, ending a sentence), then a window the
# guardrail blocks (the denied topic), then more text.
CLEAN = (
    "The weather today is mild with a light breeze from the west. "
    "Tomorrow should bring some rain in the early afternoon hours. "
)
TOPIC = "Here is my investment advice: put it all into tulip bulbs now. "
AFTER = "Anyway, back to the forecast for the rest of this week."
TOPIC_WORDS = ("tulip", "bulbs", "Anyway", "forecast for the rest")  # nothing of the blocked window nor after it
NAMED = "Please send the minutes to Jane Doe before the meeting. She will share them with the team on Friday.\nThanks."


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def bedrock() -> Iterator[Local]:
    with local_bedrock(DEFAULT_RULES, SLOW_MS) as local:
        yield local


@pytest.fixture(autouse=True)
def _static_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    use_static_credentials(monkeypatch)


@pytest.fixture
def recorder() -> RecordingFinalizer:
    return RecordingFinalizer()


@dataclass
class Guarded:
    relay: Relay
    guardrail: str  # the relay's guardrail id: its calls are told apart from other tests' by it
    bedrock: Local

    def output_calls(self) -> list[GuardrailCall]:
        return self.bedrock.calls(self.guardrail, "OUTPUT")

    def prompt_calls(self) -> list[GuardrailCall]:
        return self.bedrock.calls(self.guardrail, "INPUT")


@pytest.fixture
def guarded(
    make_relay: RelayFactory, bedrock: Local, recorder: RecordingFinalizer, request: pytest.FixtureRequest
) -> Any:
    """A factory of relays with a guardrail of their own on the local Bedrock server (the region: the test env's)."""
    numbers = itertools.count()

    def make(**overrides: Any) -> Guarded:
        guardrail = f"gr-{request.node.name[:40]}-{next(numbers)}"
        settings: dict[str, Any] = {
            "guardrail_id": guardrail,
            "guardrail_version": "1",
            "guardrail_endpoint": bedrock.base,
            "app_kwargs": {"finalizers": [recorder]},
            **overrides,
        }
        return Guarded(make_relay(**settings), guardrail, bedrock)

    return make


def _mock(text: str, chunk_chars: int = 3, **extra: Any) -> dict[str, Any]:
    """The mock upstream streams `text` a few characters a chunk: names and topics are split across chunks."""
    return {"text": text, "chunk_chars": chunk_chars, "chunk_delay_ms": 0, "ttft_ms": 1, **extra}


def _content(chunks: list[dict[str, Any]]) -> str:
    return "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk.get("choices") or ())


def _finishes(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["finish_reason"] for chunk in chunks for c in chunk.get("choices") or () if c.get("finish_reason")]


def _windows(text: str) -> list[str]:
    return split_windows(text, WindowRule.for_size(WINDOW), final=True)[0]


async def _post(relay: Relay, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
        return await client.post(f"{relay.url}{path}", json=body, headers=relay.headers())


def _sse(response: httpx.Response) -> tuple[list[dict[str, Any]], str]:
    """The chunks of an SSE body and its last event (`[DONE]` or the terminal error object)."""
    events = sse_events(response.text)
    return [json.loads(e) for e in events[:-1]], events[-1]


def test_the_texts_fall_into_the_windows_the_tests_rely_on() -> None:
    # The fixtures' premise, from the same rule the relay cuts by: each clean sentence is a window of its own, the
    # topic is the third, and a short answer is one window judged only at the finish.
    assert _windows(CLEAN + TOPIC + AFTER) == [*_sentences(CLEAN), TOPIC, AFTER]
    assert len(_windows("Hi Jane Doe.")) == 1 and len("Hi Jane Doe.") < WINDOW


def _sentences(text: str) -> list[str]:
    return [s + ". " for s in text.split(". ") if s]


# --- sync mode: anonymized ---------------------------------------------------------------------------------------


async def test_sync_mode_streams_names_anonymized_and_records_the_action(
    guarded: Any, recorder: RecordingFinalizer
) -> None:
    # GIVEN a relay with a guardrail in sync mode, and an answer naming a person, three characters a chunk
    g = guarded()
    with anyio.fail_after(PATIENCE_S):
        # WHEN a client streams it (SSE)
        response = await _post(g.relay, SSE, chat_body(stream=True, mock=_mock(NAMED)))
    # THEN it reads the answer with the name replaced by the guardrail's placeholder, and a normal end
    assert response.status_code == 200
    chunks, last = _sse(response)
    assert _content(chunks) == NAMED.replace("Jane Doe", "{NAME}") and last == "[DONE]"
    assert "Jane" not in response.text
    assert _finishes(chunks) == ["stop"] and chunks[-1]["redactions"] == {"guardrail:NAME": 1}
    # AND the outcome and the usage record carry the action and the count by kind, never the value
    outcome = recorder.wait(response.headers["x-request-id"])
    assert (outcome.reason.value, outcome.guardrail_action) == ("stop", "ANONYMIZED")
    assert dict(outcome.redactions) == {"guardrail:NAME": 1}
    record = _wait_record(g.relay, response.headers["x-request-id"])
    assert (record.guardrail_action, record.redactions) == ("ANONYMIZED", {"guardrail:NAME": 1})
    # AND every window was judged, one call each
    assert len(g.output_calls()) == len([w for w in _windows(NAMED) if w.strip()])


async def test_the_openai_sdk_reads_the_anonymized_answer(guarded: Any, recorder: RecordingFinalizer) -> None:
    # GIVEN a relay with a guardrail in sync mode
    g = guarded()
    client = openai.AsyncOpenAI(base_url=f"{g.relay.url}/v1", api_key=g.relay.key, max_retries=0, timeout=10)
    with anyio.fail_after(PATIENCE_S):
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_body={"mock": _mock(NAMED)},
        )
        chunks = [chunk.model_dump() async for chunk in stream]
        await client.close()
    # THEN the SDK reads the answer anonymized, and the outcome records the action
    assert _content(chunks) == NAMED.replace("Jane Doe", "{NAME}")
    assert recorder.wait(chunks[0]["id"]).guardrail_action == "ANONYMIZED"


async def test_a_short_answer_is_judged_at_the_finish(guarded: Any, recorder: RecordingFinalizer) -> None:
    # GIVEN an answer shorter than a window: no window is complete before the upstream finishes
    g = guarded()
    with anyio.fail_after(PATIENCE_S):
        streamed = await _post(g.relay, SSE, chat_body(stream=True, mock=_mock("Hi Jane Doe.")))
        whole = await _post(g.relay, SSE, chat_body(mock=_mock("Hi Jane Doe.")))
    # THEN it is still judged, once a request, and released anonymized before the finish (or in the one body)
    chunks, _ = _sse(streamed)
    assert _content(chunks) == "Hi {NAME}." and _finishes(chunks) == ["stop"]
    assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"] == "Hi {NAME}."
    assert [c.action for c in g.output_calls()] == ["GUARDRAIL_INTERVENED"] * 2
    for response in (streamed, whole):
        assert recorder.wait(response.headers["x-request-id"]).guardrail_action == "ANONYMIZED"


# --- sync mode: blocked ------------------------------------------------------------------------------------------


async def test_sync_mode_ends_the_stream_before_a_blocked_window(
    guarded: Any, recorder: RecordingFinalizer, upstream: Upstream
) -> None:
    # GIVEN an answer that turns to a denied topic after two clean windows
    g = guarded()
    with anyio.fail_after(PATIENCE_S):
        response = await _post(g.relay, SSE, chat_body(stream=True, mock=_mock(CLEAN + TOPIC + AFTER)))
    # THEN the stream started (200) and the clean windows arrived, exactly; nothing of the blocked one nor after
    assert response.status_code == 200
    chunks, last = _sse(response)
    assert _content(chunks) == CLEAN
    assert not [word for word in TOPIC_WORDS if word in response.text]
    # AND it ends with a content_filter finish, then the terminal error naming the kind, never the text
    assert _finishes(chunks) == ["content_filter"]
    error = json.loads(last)["error"]
    assert error["code"] == "content_filtered" and error["entity_types"] == ["topic:Investment advice"]
    outcome = recorder.wait(response.headers["x-request-id"])
    assert (outcome.reason.value, outcome.error_code, outcome.guardrail_action) == (
        "content_filter",
        "content_filtered",
        "BLOCKED",
    )
    assert dict(outcome.redactions) == {"guardrail:topic:Investment advice": 1}
    # AND nothing after the block was judged: the clean windows and the blocked one, one call each
    assert [c.action for c in g.output_calls()] == ["NONE", "NONE", "GUARDRAIL_INTERVENED"]


async def test_a_block_in_the_first_window_is_a_400(guarded: Any, recorder: RecordingFinalizer) -> None:
    # GIVEN an answer whose first window is a denied topic
    g = guarded()
    for path, stream in ((SSE, True), (NDJSON, True), (SSE, False)):
        # WHEN a client asks for it as SSE, NDJSON, and one JSON body
        with anyio.fail_after(PATIENCE_S):
            response = await _post(g.relay, path, chat_body(stream=stream, mock=_mock(TOPIC + AFTER)))
        # THEN nothing was streamed: the whole answer is a 400 naming the kind
        assert response.status_code == 400, (path, stream, response.text)
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "content_filtered" and error["entity_types"] == ["topic:Investment advice"]
        assert not [word for word in TOPIC_WORDS if word in response.text]
        outcome = recorder.wait(response.headers["x-request-id"])
        assert (outcome.reason.value, outcome.guardrail_action) == ("content_filter", "BLOCKED")


# --- async mode --------------------------------------------------------------------------------------------------


async def test_async_mode_releases_text_before_it_is_judged(guarded: Any, recorder: RecordingFinalizer) -> None:
    # GIVEN async mode, and a first window whose judgement never comes (held past the relay's guardrail timeout)
    g = guarded(guardrail_mode="async", guardrail_timeout_s=1.0)
    text = "A first window that the guardrail:slow marker holds back. " + CLEAN
    body = chat_body(stream=True, mock=_mock(text))
    received: list[dict[str, Any]] = []
    with anyio.fail_after(PATIENCE_S):
        async with (
            httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client,
            client.stream("POST", f"{g.relay.url}{NDJSON}", json=body, headers=g.relay.headers()) as response,
        ):
            lines = response.aiter_lines()
            async for line in lines:
                received.append(json.loads(line))
                if _content(received) == text:
                    break
            # THEN the whole answer arrived (200) though no window of it had been judged: nothing waited for the
            # guardrail (sync mode would have sent nothing: its first window is never judged)
            assert response.status_code == 200 and _content(received) == text
            # (the first window's call, made yet or not, has not answered; later windows may be judged meanwhile)
            assert not [c for c in g.output_calls() if c.fault == "slow" and c.action is not None]
            received += [json.loads(line) async for line in lines if line.strip()]
    # AND the call that never answered ends the stream failing closed, after the text was shown
    assert received[-1]["error"]["code"] == "guardrail_unavailable"
    assert _finishes(received)[-1] == "content_filter"
    outcome = recorder.wait(response.headers["x-request-id"])
    assert (outcome.reason.value, outcome.guardrail_action) == ("content_filter", "unavailable")


async def test_async_mode_stops_a_long_answer_at_a_blocked_topic(
    guarded: Any, recorder: RecordingFinalizer, upstream: Upstream
) -> None:
    # GIVEN async mode and a long answer that turns to a denied topic early
    g = guarded(guardrail_mode="async")
    filler = "".join(f"Filler sentence number {i:03d} keeps this answer going on. " for i in range(60))
    text = CLEAN + TOPIC + filler
    with anyio.fail_after(PATIENCE_S):
        response = await _post(g.relay, SSE, chat_body(stream=True, mock=_mock(text, chunk_chars=5, chunk_delay_ms=2)))
    # THEN the blocked window was shown (async mode judges behind the stream), and the stream stopped soon after
    assert response.status_code == 200
    chunks, last = _sse(response)
    sent = _content(chunks)
    assert sent.startswith(CLEAN + TOPIC) and text.startswith(sent) and len(sent) < len(text)
    assert _finishes(chunks) == ["content_filter"]
    error = json.loads(last)["error"]
    assert error["code"] == "content_filtered" and error["entity_types"] == ["topic:Investment advice"]
    outcome = recorder.wait(response.headers["x-request-id"])
    assert (outcome.reason.value, outcome.guardrail_action) == ("content_filter", "BLOCKED")
    # AND the upstream request was closed, not read to its end
    record = upstream.state.requests[response.headers["x-request-id"]]
    assert not record.completed and record.disconnected_at is not None


async def test_async_mode_judges_the_last_windows_before_the_end(guarded: Any, recorder: RecordingFinalizer) -> None:
    # GIVEN async mode, an answer whose denied topic is its last window, and a short answer naming a person
    g = guarded(guardrail_mode="async")
    with anyio.fail_after(PATIENCE_S):
        blocked = await _post(g.relay, SSE, chat_body(stream=True, mock=_mock(CLEAN + TOPIC)))
        named = await _post(g.relay, SSE, chat_body(stream=True, mock=_mock("Hi Jane Doe.")))
    # THEN the first does not end as if it were clean: shown (async mode cannot take it back), then stopped
    chunks, last = _sse(blocked)
    assert _content(chunks) == CLEAN + TOPIC
    assert _finishes(chunks)[-1] == "content_filter"
    assert last != "[DONE]" and json.loads(last)["error"]["code"] == "content_filtered"
    outcome = recorder.wait(blocked.headers["x-request-id"])
    assert (outcome.reason.value, outcome.guardrail_action) == ("content_filter", "BLOCKED")
    # AND the short answer went out as written, its name counted: anonymization is only counted in async mode
    chunks, last = _sse(named)
    assert _content(chunks) == "Hi Jane Doe." and last == "[DONE]"
    outcome = recorder.wait(named.headers["x-request-id"])
    assert (outcome.guardrail_action, dict(outcome.redactions)) == ("ANONYMIZED", {"guardrail:NAME": 1})


# --- an unavailable guardrail ------------------------------------------------------------------------------------


@pytest.mark.parametrize("marker", ["guardrail:throttle", "guardrail:slow"])
async def test_fail_closed_refuses_the_prompt_before_admission(
    guarded: Any, recorder: RecordingFinalizer, upstream: Upstream, marker: str
) -> None:
    # GIVEN a relay failing closed, and a prompt the guardrail cannot judge (throttled, or past the relay's timeout)
    g = guarded(guardrail_timeout_s=0.5)
    before = len(upstream.state.bodies)
    body = chat_body(stream=True, messages=[{"role": "user", "content": f"Tell me a story ({marker})."}])
    with anyio.fail_after(PATIENCE_S):
        response = await _post(g.relay, SSE, body)
    # THEN the request is refused before admission: a 503, nothing sent upstream, nothing to settle
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "guardrail_unavailable"
    assert len(upstream.state.bodies) == before  # nothing went upstream
    assert response.headers["x-request-id"] not in recorder.done  # nothing admitted, nothing to settle
    assert g.prompt_calls() and not g.output_calls()


@pytest.mark.parametrize("marker", ["guardrail:throttle", "guardrail:slow"])
async def test_fail_closed_ends_the_answer_when_the_guardrail_fails(
    guarded: Any, recorder: RecordingFinalizer, marker: str
) -> None:
    # GIVEN an answer whose third window the guardrail cannot judge (throttled, or past the relay's timeout)
    g = guarded(guardrail_timeout_s=0.5)
    with anyio.fail_after(PATIENCE_S):
        response = await _post(g.relay, SSE, chat_body(stream=True, mock=_mock(CLEAN + f"Then {marker} {TOPIC}")))
    # THEN the clean windows arrived, the unjudged one did not, and the stream ends content_filter
    chunks, last = _sse(response)
    assert _content(chunks) == CLEAN and _finishes(chunks) == ["content_filter"]
    error = json.loads(last)["error"]
    assert error["code"] == "guardrail_unavailable" and error["type"] == "server_error"
    outcome = recorder.wait(response.headers["x-request-id"])
    assert (outcome.reason.value, outcome.guardrail_action) == ("content_filter", "unavailable")


async def test_fail_closed_before_the_first_text_is_a_503(guarded: Any) -> None:
    # GIVEN an answer whose first window the guardrail cannot judge
    g = guarded(guardrail_timeout_s=0.5)
    with anyio.fail_after(PATIENCE_S):
        response = await _post(g.relay, NDJSON, chat_body(mock=_mock("guardrail:throttle at once. " + CLEAN)))
    # THEN nothing was streamed: the whole answer is a 503
    assert response.status_code == 503 and response.json()["error"]["code"] == "guardrail_unavailable"


async def test_fail_open_passes_prompt_and_answer_unassessed_and_logs_no_text(
    guarded: Any, recorder: RecordingFinalizer, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a relay failing open, and a prompt and an answer that the guardrail cannot judge
    caplog.set_level(logging.DEBUG, logger="llm_relay")
    g = guarded(guardrail_on_error="fail_open", guardrail_timeout_s=0.5)
    prompt = "Please answer John Smith (guardrail:throttle)."
    answer = "Dear Jane Doe, guardrail:throttle is all I have to say today."
    body = chat_body(stream=True, messages=[{"role": "user", "content": prompt}], mock=_mock(answer))
    with anyio.fail_after(PATIENCE_S):
        response = await _post(g.relay, SSE, body)
    # THEN the prompt went upstream as written (unassessed) and the answer came back as written
    assert upstream.state.bodies[-1]["messages"][0]["content"] == prompt
    chunks, last = _sse(response)
    assert _content(chunks) == answer and last == "[DONE]"
    # AND the outcome says the answer went unassessed
    outcome = recorder.wait(response.headers["x-request-id"])
    assert outcome.reason.value == "stop"
    assert outcome.guardrail_action == "unavailable"
    assert recorder.contexts[response.headers["x-request-id"]].prompt_redactions == {"guardrail:unavailable": 1}
    # AND each failure was logged as a warning, without any text of the prompt or the answer
    warnings = [r for r in caplog.records if r.name == "llm_relay.sanitize.guardrail"]
    assert {r.levelno for r in warnings} == {logging.WARNING}
    assert ["prompt" in r.getMessage() for r in warnings] == [True, False]
    for record in caplog.records:
        rendered = record.getMessage() + repr(vars(record))
        assert not [value for value in ("John Smith", "Jane Doe", "Please answer", "Dear") if value in rendered]


# --- the prompt --------------------------------------------------------------------------------------------------


async def test_a_name_in_the_prompt_reaches_the_upstream_anonymized(
    guarded: Any, recorder: RecordingFinalizer, upstream: Upstream
) -> None:
    # GIVEN a prompt naming a person, in the second of two messages
    g = guarded()
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a short note to John Smith about lunch."},
    ]
    with anyio.fail_after(PATIENCE_S):
        response = await _post(g.relay, SSE, chat_body(stream=True, messages=messages, mock=_mock("Done.")))
    # THEN the upstream received it with the name anonymized, and the record counts it by kind
    assert response.status_code == 200
    sent = upstream.state.bodies[-1]["messages"]
    assert [m["content"] for m in sent] == ["You are a helpful assistant.", "Write a short note to {NAME} about lunch."]
    request_id = response.headers["x-request-id"]
    recorder.wait(request_id)
    assert recorder.contexts[request_id].prompt_redactions == {"guardrail:NAME": 1}
    assert [c.items for c in g.prompt_calls()] == [2]  # one call, a content item per message


async def test_a_denied_topic_in_the_prompt_is_a_400_that_costs_nothing(
    guarded: Any, recorder: RecordingFinalizer, upstream: Upstream
) -> None:
    # GIVEN a prompt asking about the denied topic
    g = guarded()
    before = len(upstream.state.bodies)
    messages = [{"role": "user", "content": "Give me investment advice: which stocks to buy?"}]
    with anyio.fail_after(PATIENCE_S):
        response = await _post(g.relay, SSE, chat_body(stream=True, messages=messages))
    # THEN a 400 names the kind (never the text), before admission: nothing went upstream, nothing to settle
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "prompt_blocked" and "topic:Investment advice" in error["message"]
    assert "which stocks" not in response.text
    assert len(upstream.state.bodies) == before and not g.output_calls()
    assert response.headers["x-request-id"] not in recorder.done


# --- the pattern sanitizer and the guardrail together --------------------------------------------------------------


async def test_the_sanitizer_and_the_guardrail_redact_the_same_answer(
    guarded: Any, recorder: RecordingFinalizer
) -> None:
    # GIVEN a relay that redacts patterns and has a guardrail, and an answer with an e-mail address and a name
    g = guarded(sanitize="redact")
    answer = "Write to jane.roe@example.org and copy Jane Doe on it. She keeps the archive of every message."
    with anyio.fail_after(PATIENCE_S):
        response = await _post(g.relay, NDJSON, chat_body(mock=_mock(answer)))
    # THEN both kinds of redaction are in the one answer, and both are counted
    lines = ndjson_lines(response.text)
    assert _content(lines[:-1]) == answer.replace("jane.roe@example.org", "[EMAIL]").replace("Jane Doe", "{NAME}")
    assert lines[-1]["redactions"] == {"EMAIL": 1, "guardrail:NAME": 1}
    outcome: StreamOutcome = recorder.wait(response.headers["x-request-id"])
    assert dict(outcome.redactions) == {"EMAIL": 1, "guardrail:NAME": 1}
    assert outcome.guardrail_action == "ANONYMIZED"


def _wait_record(relay: Relay, request_id: str) -> Any:
    def found() -> Any:
        records = relay.stores.usage.for_key(relay.api_key.key_id, 0, 2**31)
        return next((r for r in records if r.request_id == request_id), None)

    return wait_until(found, f"the usage record of {request_id}")

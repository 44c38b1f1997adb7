"""The mock upstream's NDJSON modes over real HTTP: Ollama's `/api/chat` and this project's own NDJSON shape at
`/ndjson/chat`, each asked for by its dialect's own request and read back by its own decoder, with every fault
driven by the `mock:` system-message directive (the way a test drives every kind of upstream alike)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from llm_relay.chat_request import ChatRequest
from llm_relay.upstreams.base import END, Decoded, Dialect, Failed
from llm_relay.upstreams.ndjson import MALFORMED, NDJSONDialect, OllamaDialect
from llm_relay_dev.mock_upstream import WORDS, MockState, create_mock_app
from tests.servers import serve

MODES = ("ollama", "ndjson")


@dataclass
class Mock:
    base: str
    state: MockState

    def dialect(self, mode: str) -> Dialect:
        return OllamaDialect(self.base) if mode == "ollama" else NDJSONDialect(f"{self.base}/ndjson/chat")


@pytest.fixture(scope="module")
def mock() -> Iterator[Mock]:
    app = create_mock_app()
    with serve(app) as base:
        yield Mock(base, app.state.mock)


@dataclass
class Answer:
    status: int
    items: list[Decoded] = field(default_factory=list)
    raw: bytes = b""
    error: Exception | None = None

    @property
    def text(self) -> str:
        deltas = [i["choices"][0]["delta"] for i in self.items if isinstance(i, dict) and i["choices"]]
        return "".join(d.get("content", "") for d in deltas)

    @property
    def finish(self) -> list[str]:
        chunks = [i for i in self.items if isinstance(i, dict) and i["choices"]]
        return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]

    @property
    def usage(self) -> list[dict[str, int]]:
        return [i["usage"] for i in self.items if isinstance(i, dict) and "usage" in i]


def _body(faults: dict[str, Any] | None = None, text: str = "Say something.") -> dict[str, Any]:
    """The relay's upstream body for a chat whose system message asks the mock for `faults`."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
    if faults is not None:
        faults = {"ttft_ms": 0, "chunk_delay_ms": 0, **faults}
        messages.insert(0, {"role": "system", "content": f"mock: {json.dumps(faults)}"})
    return ChatRequest.model_validate({"model": "client", "messages": messages, "stream": True}).upstream_body()


def _ask(mock: Mock, mode: str, body: dict[str, Any], request_id: str, read_timeout: float = 10) -> Answer:
    """Send what the dialect builds and feed the body to its decoder as it arrives."""
    dialect = mock.dialect(mode)
    request = asyncio.run(dialect.request(body, "route-model", request_id))
    decoder = dialect.decoder("route-model", 1)
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=read_timeout)) as client,
        client.stream("POST", request.url, content=request.content, headers=request.headers) as response,
    ):
        answer = Answer(response.status_code)
        try:
            for raw in response.iter_raw():
                answer.raw += raw
                answer.items += decoder.feed(raw)
            answer.items += decoder.close()
        except (httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
            answer.error = exc
    return answer


def _record(mock: Mock, request_id: str) -> dict[str, Any]:
    response = httpx.get(f"{mock.base}/mock/requests/{request_id}")
    assert response.status_code == 200
    record: dict[str, Any] = response.json()
    return record


@pytest.mark.parametrize("mode", MODES)
def test_text_stream(mock: Mock, mode: str) -> None:
    # GIVEN a plain request WHEN the mock answers in this mode
    answer = _ask(mock, mode, _body({"tokens": 12}), f"text-{mode}")
    # THEN the decoder reads the same words as the SSE mock, a stop finish, the mock's counts and the end
    assert answer.status == 200
    assert answer.text == "".join(WORDS[i % len(WORDS)] for i in range(12))
    assert answer.finish == ["stop"]
    assert answer.usage[0]["completion_tokens"] == 12 and answer.usage[0]["prompt_tokens"] >= 1
    assert answer.items[-1] is END
    record = _record(mock, f"text-{mode}")
    assert (record["stream"], record["chunks_sent"], record["completed"]) == (True, 12, True)


def test_ollama_wire_shape(mock: Mock) -> None:
    answer = _ask(mock, "ollama", _body({"tokens": 2, "finish_reason": "length"}), "ollama-wire")
    lines = [json.loads(line) for line in answer.raw.splitlines()]
    assert [line["message"]["content"] for line in lines] == ["The", " quick", ""]
    assert [line["done"] for line in lines] == [False, False, True]
    assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 2
    assert all(line["model"] == "route-model" for line in lines)
    assert mock.state.bodies[-1]["messages"][0]["role"] == "system"  # Ollama's body: the directive went as text


def test_ndjson_wire_shape_is_this_relays_own(mock: Mock) -> None:
    answer = _ask(mock, "ndjson", _body({"tokens": 1}), "ndjson-wire")
    lines = [json.loads(line) for line in answer.raw.splitlines()]
    assert [line["object"] for line in lines] == ["chat.completion.chunk"] * 4 + ["relay.summary"]
    assert lines[-1]["termination_reason"] == "stop"
    assert lines[-1]["usage"]["completion_tokens"] == 1 and lines[-1]["usage"]["estimated"] is False


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("finish", ["length", "tool_calls"])
def test_finish_reason(mock: Mock, mode: str, finish: str) -> None:
    answer = _ask(mock, mode, _body({"tokens": 2, "finish_reason": finish}), f"finish-{mode}-{finish}")
    # Ollama has no tool_calls done_reason (its decoder derives it from the calls it saw): stop
    assert answer.finish == [finish if mode == "ndjson" or finish == "length" else "stop"]


@pytest.mark.parametrize("mode", MODES)
def test_status(mock: Mock, mode: str) -> None:
    answer = _ask(mock, mode, _body({"status": 429, "retry_after": 3}), f"status-{mode}")
    assert answer.status == 429
    error = json.loads(answer.raw)["error"]
    assert (error if mode == "ollama" else error["message"]) == "mock: status 429"


@pytest.mark.parametrize("mode", MODES)
def test_fail_first(mock: Mock, mode: str) -> None:
    body = _body({"fail_first": 1, "id": f"retry-{mode}", "tokens": 1})
    assert _ask(mock, mode, body, f"fail-first-{mode}-1").status == 503
    assert _ask(mock, mode, body, f"fail-first-{mode}-2").items[-1] is END


@pytest.mark.parametrize("mode", MODES)
def test_drop_after(mock: Mock, mode: str) -> None:
    answer = _ask(mock, mode, _body({"tokens": 6, "drop_after": 3}), f"drop-{mode}")
    assert isinstance(answer.error, httpx.RemoteProtocolError)
    assert answer.text == "The quick brown" and answer.finish == [] and END not in answer.items
    assert _record(mock, f"drop-{mode}")["chunks_sent"] == 3


@pytest.mark.parametrize("mode", MODES)
def test_stall_after(mock: Mock, mode: str) -> None:
    # the stall lasts an hour: the read timeout ends the wait; 2 s so a loaded machine still delivers the first two
    answer = _ask(mock, mode, _body({"tokens": 6, "stall_after": 2}), f"stall-{mode}", read_timeout=2.0)
    assert isinstance(answer.error, httpx.ReadTimeout)
    assert answer.text == "The quick" and answer.finish == []


@pytest.mark.parametrize("mode", MODES)
def test_malformed_after(mock: Mock, mode: str) -> None:
    answer = _ask(mock, mode, _body({"tokens": 6, "malformed_after": 2}), f"malformed-{mode}")
    assert answer.text == "The quick"
    assert answer.items[-1] == Failed(MALFORMED)


@pytest.mark.parametrize("mode", MODES)
def test_error_after(mock: Mock, mode: str) -> None:
    answer = _ask(mock, mode, _body({"tokens": 6, "error_after": 2}), f"error-{mode}")
    assert answer.text == "The quick"
    assert answer.items[-1] == Failed("Upstream error: mock upstream failure")


@pytest.mark.parametrize("mode", MODES)
def test_no_finish(mock: Mock, mode: str) -> None:
    # GIVEN a stream that stops without its final line WHEN decoded THEN no finish and no end: incomplete
    answer = _ask(mock, mode, _body({"tokens": 3, "no_finish": True}), f"no-finish-{mode}")
    assert answer.error is None and answer.text == "The quick brown"
    assert answer.finish == [] and END not in answer.items
    assert _record(mock, f"no-finish-{mode}")["completed"] is True


@pytest.mark.parametrize("mode", MODES)
def test_headers_delay_and_ttft(mock: Mock, mode: str) -> None:
    started = time.monotonic()
    answer = _ask(mock, mode, _body({"tokens": 1, "headers_delay_ms": 200, "ttft_ms": 100}), f"delay-{mode}")
    assert time.monotonic() - started >= 0.3
    assert answer.items[-1] is END


@pytest.mark.parametrize("mode", MODES)
def test_last_directive_wins_and_a_bad_one_is_a_400(mock: Mock, mode: str) -> None:
    body = _body({"tokens": 5})
    body["messages"].append({"role": "system", "content": 'mock: {"tokens": 2, "ttft_ms": 0}'})
    assert _ask(mock, mode, body, f"directive-{mode}").text == "The quick"
    body["messages"].append({"role": "system", "content": "mock: tokens=2"})
    assert _ask(mock, mode, body, f"bad-directive-{mode}").status == 400


def test_sse_mode_takes_the_directive_and_the_mock_field_first(mock: Mock) -> None:
    body = {**_body({"tokens": 2}), "stream": False}
    response = httpx.post(f"{mock.base}/v1/chat/completions", json=body)
    assert response.json()["choices"][0]["message"]["content"] == "The quick"
    response = httpx.post(f"{mock.base}/v1/chat/completions", json={**body, "mock": {"tokens": 1, "ttft_ms": 0}})
    assert response.json()["choices"][0]["message"]["content"] == "The"

"""The mock upstream's embeddings over real HTTP: OpenAI's `/v1/embeddings` and Ollama's `/api/embed`, their
deterministic vectors and counts, faults and records; then the relay's embeddings pieces (`Upstreams.embed`)
against them, an `openai` and an `ollama` upstream, including a cancel while the upstream holds its answer."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from llm_relay.embeddings_request import validate_embeddings_request
from llm_relay.errors import UpstreamError
from llm_relay.settings import Settings
from llm_relay.upstreams.embeddings import EmbeddingsResult
from llm_relay.upstreams.http import Progress
from llm_relay.upstreams.router import Upstreams
from llm_relay.upstreams.table import load_table
from llm_relay_dev.mock_embeddings import mock_vector
from llm_relay_dev.mock_upstream import MockState, create_mock_app
from tests.servers import serve
from tests.waiting import wait_until

SHAPES = ("openai", "ollama")
PATHS = {"openai": "/v1/embeddings", "ollama": "/api/embed"}


@dataclass
class Mock:
    base: str
    state: MockState

    def post(self, shape: str, body: dict[str, Any], request_id: str, timeout: float = 10) -> httpx.Response:
        return httpx.post(
            f"{self.base}{PATHS[shape]}", json=body, headers={"x-request-id": request_id}, timeout=timeout
        )

    def record(self, request_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/mock/requests/{request_id}")
        assert response.status_code == 200
        record: dict[str, Any] = response.json()
        return record


@pytest.fixture(scope="module")
def mock() -> Iterator[Mock]:
    app = create_mock_app()
    with serve(app) as base:
        yield Mock(base, app.state.mock)


def _vectors(shape: str, answer: dict[str, Any]) -> list[Any]:
    if shape == "ollama":
        return list(answer["embeddings"])
    return [item["embedding"] for item in answer["data"]]


def _tokens(shape: str, answer: dict[str, Any]) -> int | None:
    if shape == "ollama":
        return answer.get("prompt_eval_count")
    usage = answer.get("usage")
    return usage["prompt_tokens"] if usage else None


def _faults(shape: str, faults: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """A body asking for `faults`: the `mock` object for OpenAI's shape, a `mock:` input for Ollama's (the relay
    forwards no unknown field to Ollama)."""
    if shape == "openai":
        return {"model": "m", "input": texts, "mock": faults}
    return {"model": "m", "input": [*texts, f"mock: {json.dumps(faults)}"]}


# --- the mock on its own ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_vectors_and_counts_are_deterministic_and_recorded(mock: Mock, shape: str) -> None:
    # GIVEN two texts WHEN embedded
    response = mock.post(shape, {"model": "emb-x", "input": ["hello world", "abc"]}, f"plain-{shape}")
    # THEN each vector is the input's own, of 8 dimensions, and the count is a token per four characters
    assert response.status_code == 200
    answer = response.json()
    assert _vectors(shape, answer) == [mock_vector("hello world"), mock_vector("abc")]
    assert len(mock_vector("abc")) == 8 and _tokens(shape, answer) == 2 + 1
    assert answer["model"] == "emb-x"
    # AND the request is recorded like a chat request, with its body
    record = mock.record(f"plain-{shape}")
    assert (record["stream"], record["completed"], record["disconnected_at"]) == (False, True, None)
    assert {"model": "emb-x", "input": ["hello world", "abc"]} in mock.state.bodies


def test_openai_shape_wire_format(mock: Mock) -> None:
    answer = mock.post("openai", {"model": "m", "input": "one"}, "openai-wire").json()
    assert answer == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": mock_vector("one")}],
        "model": "m",
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }


def test_openai_shape_sends_base64_float32_when_asked(mock: Mock) -> None:
    answer = mock.post("openai", {"model": "m", "input": "x", "encoding_format": "base64"}, "b64").json()
    raw = base64.b64decode(answer["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == mock_vector("x")  # exact: multiples of 1/128


@pytest.mark.parametrize("shape", SHAPES)
def test_dimensions_are_honoured(mock: Mock, shape: str) -> None:
    answer = mock.post(shape, {"model": "m", "input": "x", "dimensions": 40}, f"dims-{shape}").json()
    assert _vectors(shape, answer) == [mock_vector("x", 40)] and len(mock_vector("x", 40)) == 40


def test_token_ids_are_embedded_by_openais_shape_and_refused_by_ollamas(mock: Mock) -> None:
    answer = mock.post("openai", {"model": "m", "input": [[1, 2, 3], [4]]}, "ids").json()
    assert _vectors("openai", answer) == [mock_vector([1, 2, 3]), mock_vector([4])]
    assert _tokens("openai", answer) == 4
    assert mock.post("ollama", {"model": "m", "input": [1, 2, 3]}, "ids-ollama").status_code == 400


@pytest.mark.parametrize("shape", SHAPES)
def test_status_fault(mock: Mock, shape: str) -> None:
    response = mock.post(shape, _faults(shape, {"status": 429, "retry_after": 2}, ["x"]), f"status-{shape}")
    assert (response.status_code, response.headers["retry-after"]) == (429, "2")
    error = response.json()["error"]
    assert (error if shape == "ollama" else error["message"]) == "mock: status 429"


@pytest.mark.parametrize("shape", SHAPES)
def test_fail_first(mock: Mock, shape: str) -> None:
    body = _faults(shape, {"fail_first": 1, "id": f"emb-retry-{shape}"}, ["x"])
    assert mock.post(shape, body, f"fail-first-{shape}-1").status_code == 503
    assert mock.post(shape, body, f"fail-first-{shape}-2").status_code == 200


@pytest.mark.parametrize("shape", SHAPES)
def test_malformed_no_usage_and_wrong_count(mock: Mock, shape: str) -> None:
    malformed = mock.post(shape, _faults(shape, {"malformed": True}, ["x"]), f"malformed-{shape}")
    assert malformed.status_code == 200
    with pytest.raises(ValueError):
        malformed.json()
    answer = mock.post(shape, _faults(shape, {"no_usage": True}, ["x"]), f"no-usage-{shape}").json()
    assert _tokens(shape, answer) is None
    answer = mock.post(shape, _faults(shape, {"wrong_count": True}, ["x", "y"]), f"count-{shape}").json()
    assert len(_vectors(shape, answer)) == (2 if shape == "openai" else 3) - 1  # Ollama's directive is an input too


@pytest.mark.parametrize("shape", SHAPES)
def test_a_held_answer_notes_the_clients_disconnect(mock: Mock, shape: str) -> None:
    # GIVEN an answer held back for a minute WHEN the client gives up waiting
    body = _faults(shape, {"headers_delay_ms": 60_000}, ["x"])
    with pytest.raises(httpx.ReadTimeout):
        mock.post(shape, body, f"held-{shape}", timeout=0.5)
    # THEN the mock notes the disconnect, and that it never answered
    record = wait_until(lambda: (r := mock.record(f"held-{shape}"))["disconnected_at"] and r, "the disconnect")
    assert record["completed"] is False


@pytest.mark.parametrize("shape", SHAPES)
def test_a_bad_directive_is_a_400(mock: Mock, shape: str) -> None:
    body = {"model": "m", "input": ["x", "mock: status=500"]}
    assert mock.post(shape, body, f"bad-directive-{shape}").status_code == 400


# --- the relay's pieces against it ------------------------------------------------------------------------------


def _upstreams(mock: Mock) -> Upstreams:
    table = [
        {"name": "oa", "kind": "openai", "url": f"{mock.base}/v1", "models": ["text-emb"]},
        {"name": "ol", "kind": "ollama", "url": mock.base, "models": ["nomic"], "rewrite": "nomic-embed-text"},
    ]
    settings = Settings(upstream_retry_base_s=0.001, upstream_retry_max_s=0.002, upstream_max_retries=2)
    return Upstreams(settings, load_table(json.dumps(table), None, {}))


def _embed(mock: Mock, body: dict[str, Any], request_id: str) -> tuple[EmbeddingsResult, Progress]:
    request = validate_embeddings_request(body, allowed_models=None)

    async def run() -> tuple[EmbeddingsResult, Progress]:
        upstreams = _upstreams(mock)
        progress = Progress()
        try:
            return await upstreams.embed(request, request_id, progress), progress
        finally:
            await upstreams.aclose()

    return anyio.run(run)


@pytest.mark.parametrize(("model", "upstream"), [("text-emb", "oa"), ("nomic", "ol")])
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embed_gets_openais_answer_from_either_kind(mock: Mock, model: str, upstream: str, encoding: str) -> None:
    # GIVEN a client asking an upstream of either kind for two vectors, in either encoding
    body = {"model": model, "input": ["hello world", "abc"], "encoding_format": encoding}
    # WHEN embedded through the relay's pieces
    result, progress = _embed(mock, body, f"embed-{upstream}-{encoding}")
    # THEN it is OpenAI's answer, naming the client's model, with the mock's vectors and count
    vectors = [item["embedding"] for item in result.body["data"]]
    if encoding == "base64":
        vectors = [list(struct.unpack("<8f", base64.b64decode(vector))) for vector in vectors]
    assert vectors == [mock_vector("hello world"), mock_vector("abc")]
    assert result.body["model"] == model and result.body["object"] == "list"
    assert (result.prompt_tokens, result.upstream, progress.attempts) == (3, upstream, 1)


def test_embed_retries_the_mocks_503_then_answers(mock: Mock) -> None:
    body = {"model": "nomic", "input": ["x", 'mock: {"fail_first": 2, "id": "embed-retry"}']}
    result, progress = _embed(mock, body, "embed-retry")
    assert (progress.attempts, progress.failures) == (3, {"5xx": 2})
    assert len(result.body["data"]) == 2
    assert mock.state.bodies[-1]["model"] == "nomic-embed-text"  # the route's name went upstream


def test_embed_reports_an_unusable_answer_as_the_upstreams_error(mock: Mock) -> None:
    request = validate_embeddings_request(
        {"model": "text-emb", "input": "x", "mock": {"wrong_count": True}}, allowed_models=None
    )

    async def run() -> UpstreamError:
        upstreams = _upstreams(mock)
        try:
            with pytest.raises(UpstreamError) as caught:
                await upstreams.embed(request, "embed-unusable")
            return caught.value
        finally:
            await upstreams.aclose()

    failure = anyio.run(run)
    assert failure.upstream == "oa" and "0 vectors for 1 inputs" in failure.message


@pytest.mark.parametrize(("model", "shape"), [("text-emb", "openai"), ("nomic", "ollama")])
def test_a_cancel_while_the_upstream_holds_its_answer_closes_the_request(mock: Mock, model: str, shape: str) -> None:
    # GIVEN an upstream holding its answer for a minute
    request_id = f"embed-cancel-{shape}"
    body = _faults(shape, {"headers_delay_ms": 60_000}, ["x"])
    request = validate_embeddings_request({**body, "model": model}, allowed_models=None)

    async def run() -> bool:
        upstreams = _upstreams(mock)
        try:
            async with anyio.create_task_group() as tg:

                async def cancel_once_the_upstream_has_it() -> None:
                    # the mock serves from its own thread: wait for its record in a worker thread
                    await anyio.to_thread.run_sync(wait_until, lambda: request_id in mock.state.requests, "the request")
                    tg.cancel_scope.cancel()  # what the caller's deadline or a client's cancel does

                tg.start_soon(cancel_once_the_upstream_has_it)
                await upstreams.embed(request, request_id)
            return tg.cancel_scope.cancel_called
        finally:
            await upstreams.aclose()

    # WHEN the caller cancels meanwhile
    assert anyio.run(run)
    # THEN the upstream sees the request closed, and never answered it
    record = wait_until(lambda: (r := mock.record(request_id))["disconnected_at"] and r, "the disconnect")
    assert record["completed"] is False

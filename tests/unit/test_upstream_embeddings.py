"""Embeddings upstream pieces: the request each kind gets, the OpenAI answer read from each kind's body (base64
included), the bodies that cannot be trusted, `post_embeddings` over the shared exchange (retries, body reads,
closing on every ending), and `Upstreams.embed` / `embeddings_route`. Against `httpx.MockTransport`: no socket."""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from llm_relay.embeddings_request import EmbeddingsRequest, validate_embeddings_request
from llm_relay.errors import InvalidRequest, ModelNotAllowed, UpstreamError, UpstreamTimeout
from llm_relay.settings import Settings
from llm_relay.upstreams.base import UpstreamRequest
from llm_relay.upstreams.embeddings import (
    INLINE_READ_BYTES,
    EmbeddingsResult,
    check_embeds,
    embeddings_http_request,
    post_embeddings,
    read_embeddings_answer,
    read_embeddings_response,
)
from llm_relay.upstreams.http import HttpExchange, Progress
from llm_relay.upstreams.openai import OpenAIDialect
from llm_relay.upstreams.router import Upstreams
from llm_relay.upstreams.table import load_table

HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-test"}


def _request(**body: Any) -> EmbeddingsRequest:
    return validate_embeddings_request({"model": "client-emb", "input": "hello", **body}, allowed_models=None)


def _sent(kind: str, request: EmbeddingsRequest, url: str = "http://up.test/v1/") -> tuple[str, dict[str, Any]]:
    prepared = embeddings_http_request(kind, url, request, "route-emb", HEADERS)
    assert prepared.headers == HEADERS
    return prepared.url, json.loads(prepared.content)


def _f32(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def _from_b64(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# --- which kinds embed ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ndjson", "bedrock"])
def test_a_kind_without_embeddings_is_refused_naming_the_model(kind: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        embeddings_http_request(kind, "http://up.test", _request(), "route-emb", HEADERS)
    assert caught.value.param == "model"
    assert (
        caught.value.message == f"The upstream serving the model 'client-emb' (kind {kind}) does not serve embeddings."
    )


def test_the_openai_and_ollama_kinds_embed() -> None:
    check_embeds("openai", "m")
    check_embeds("ollama", "m")


# --- the request of each kind -----------------------------------------------------------------------------------


def test_openai_gets_the_clients_fields_with_the_routes_model_and_without_metadata() -> None:
    # GIVEN a request with every field, the relay's metadata and a provider's own field
    request = _request(
        input=["a", "b"], encoding_format="base64", dimensions=64, user="u", metadata={"t": 1}, input_type="query"
    )
    # WHEN built for the openai kind
    url, body = _sent("openai", request)
    # THEN it goes to {base}/embeddings with what the client sent, the route's model, and no metadata
    assert url == "http://up.test/v1/embeddings"
    assert body == {
        "model": "route-emb",
        "input": ["a", "b"],
        "encoding_format": "base64",
        "dimensions": 64,
        "user": "u",
        "input_type": "query",
    }


@pytest.mark.parametrize("value", ["one text", [1, 2, 3], [[1, 2], [3]]])
def test_openai_gets_the_input_in_the_shape_the_client_sent(value: Any) -> None:
    _, body = _sent("openai", _request(input=value))
    assert body == {"model": "route-emb", "input": value}  # and nothing the client did not send


def test_ollama_gets_its_native_body_with_no_truncation() -> None:
    # GIVEN one text, a dimension and base64 asked for
    request = _request(input="hello", dimensions=32, encoding_format="base64")
    # WHEN built for the ollama kind
    url, body = _sent("ollama", request, url="http://ollama.test:11434")
    # THEN /api/embed with a list of texts, no silent truncation, and the encoding left to the relay
    assert url == "http://ollama.test:11434/api/embed"
    assert body == {"model": "route-emb", "input": ["hello"], "truncate": False, "dimensions": 32}


def test_ollama_drops_only_the_metadata_and_the_null_fields() -> None:
    _, body = _sent("ollama", _request(input=["a", "b"], metadata={"t": 1}, input_type=None))
    assert body == {"model": "route-emb", "input": ["a", "b"], "truncate": False}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": [1, 2]}, "input"),
        ({"input": [[1], [2]]}, "input"),
        ({"input_type": "query"}, "input_type"),
        ({"keep_alive": "5m", "user": "u"}, "keep_alive"),
    ],
)
def test_ollama_refuses_what_it_would_ignore_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _sent("ollama", _request(**fields))
    assert caught.value.param == param and caught.value.status_code == 400


# --- reading the answer -----------------------------------------------------------------------------------------


def _openai_body(vectors: list[Any], usage: dict[str, Any] | None = None, order: list[int] | None = None) -> bytes:
    indexes = order or list(range(len(vectors)))
    data = [{"object": "embedding", "index": i, "embedding": vectors[i]} for i in indexes]
    answer: dict[str, Any] = {"object": "list", "data": data, "model": "upstream-name"}
    if usage is not None:
        answer["usage"] = usage
    return json.dumps(answer).encode()


def _read(kind: str, body: bytes, **fields: Any) -> EmbeddingsResult:
    return read_embeddings_response(kind, body, _request(**fields), "client-emb")


def test_openai_answer_is_in_index_order_names_the_clients_model_and_keeps_the_count() -> None:
    # GIVEN an upstream that answers three inputs out of order, with its own model name and count
    body = _openai_body([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], {"prompt_tokens": 7, "total_tokens": 7}, order=[2, 0, 1])
    # WHEN read
    result = _read("openai", body, input=["a", "b", "c"])
    # THEN the client gets OpenAI's answer in index order, under its own model name, with the upstream's count
    assert result.body == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
            {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
            {"object": "embedding", "index": 2, "embedding": [0.5, 0.6]},
        ],
        "model": "client-emb",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    assert result.prompt_tokens == 7


def test_openai_items_without_an_index_are_in_their_order() -> None:
    body = json.dumps({"data": [{"embedding": [1.0]}, {"embedding": [2.0]}]}).encode()
    result = _read("openai", body, input=["a", "b"])
    assert [item["embedding"] for item in result.body["data"]] == [[1.0], [2.0]]


VALUES = [0.5, -0.25, 1.0, 0.125]  # exact in float32


def test_openai_base64_passes_through_when_the_client_asked_for_it() -> None:
    encoded = _f32(VALUES)
    result = _read("openai", _openai_body([encoded]), encoding_format="base64")
    assert result.body["data"][0]["embedding"] == encoded


def test_floats_from_an_upstream_that_ignored_base64_are_encoded_for_the_client() -> None:
    # GIVEN an OpenAI-compatible server that answered floats although base64 was asked for
    result = _read("openai", _openai_body([VALUES]), encoding_format="base64")
    # THEN the client gets base64 of little-endian float32, which decodes to the same values
    assert _from_b64(result.body["data"][0]["embedding"]) == VALUES


def test_base64_from_an_upstream_is_decoded_for_a_client_that_asked_for_floats() -> None:
    result = _read("openai", _openai_body([_f32(VALUES)]))
    assert result.body["data"][0]["embedding"] == VALUES


def test_ollama_answer_becomes_openais_with_prompt_eval_count_as_usage() -> None:
    # GIVEN Ollama's answer to two texts
    body = json.dumps({"model": "nomic", "embeddings": [[0.5, 0.25], [-1.0, 0.0]], "prompt_eval_count": 9}).encode()
    # WHEN read
    result = _read("ollama", body, input=["a", "b"])
    # THEN it is OpenAI's answer with Ollama's count
    assert result.body == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, 0.25]},
            {"object": "embedding", "index": 1, "embedding": [-1.0, 0.0]},
        ],
        "model": "client-emb",
        "usage": {"prompt_tokens": 9, "total_tokens": 9},
    }
    assert result.prompt_tokens == 9


def test_ollama_floats_are_encoded_as_openai_base64() -> None:
    # GIVEN Ollama (which has no encoding_format) and a client asking for base64 (the OpenAI SDK's default)
    body = json.dumps({"embeddings": [VALUES, [0.1, 0.2, 0.3, 0.4]], "prompt_eval_count": 2}).encode()
    # WHEN read
    data = _read("ollama", body, input=["a", "b"], encoding_format="base64").body["data"]
    # THEN each vector is the base64 of its little-endian float32 values
    assert _from_b64(data[0]["embedding"]) == VALUES
    assert _from_b64(data[1]["embedding"]) == [
        struct.unpack("<f", struct.pack("<f", v))[0] for v in (0.1, 0.2, 0.3, 0.4)
    ]


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("openai", _openai_body([[1.0]])),
        ("openai", _openai_body([[1.0]], {"total_tokens": 3})),
        ("openai", _openai_body([[1.0]], {"prompt_tokens": 0, "total_tokens": 0})),  # a server that did not count
        ("ollama", json.dumps({"embeddings": [[1.0]]}).encode()),
        ("ollama", json.dumps({"embeddings": [[1.0]], "prompt_eval_count": None}).encode()),
    ],
)
def test_without_the_upstreams_count_the_answer_carries_the_estimate(kind: str, body: bytes) -> None:
    # GIVEN an answer without a usable count WHEN read
    result = _read(kind, body, input="abcdefgh")
    # THEN prompt_tokens says there was none, and the client's usage holds the relay's estimate (2 + 1)
    assert result.prompt_tokens is None
    assert result.body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_the_dimensions_asked_for_are_checked() -> None:
    # GIVEN 4 dimensions asked and an upstream that ignored it (an Ollama without `dimensions`)
    body = json.dumps({"embeddings": [[0.1] * 8]}).encode()
    with pytest.raises(UpstreamError) as caught:
        _read("ollama", body, dimensions=4)
    assert "8 dimensions, not 4" in caught.value.message and "'dimensions'" in caught.value.message
    # AND an answer of the dimension asked is read
    assert len(_read("ollama", json.dumps({"embeddings": [[0.1] * 4]}).encode(), dimensions=4).body["data"]) == 1


SECRET = "sk-do-not-echo"


@pytest.mark.parametrize(
    ("kind", "body", "why"),
    [
        ("openai", f'{{"data": [ "{SECRET}'.encode(), "not JSON"),
        ("openai", b"\xff\xfe", "not JSON"),
        ("openai", b"[1, 2]", "not a JSON object"),
        ("openai", b'{"data": [{"index": 0, "embedding": [NaN]}]}', "not JSON"),
        ("openai", b'{"data": [{"index": 0, "embedding": [1e999]}]}', "vector 0 is not a list of numbers"),
        ("openai", b'{"object": "list"}', "no data"),
        ("openai", _openai_body([[1.0], [2.0]]), "2 vectors for 1 inputs"),
        ("openai", _openai_body([]), "0 vectors for 1 inputs"),
        ("openai", b'{"data": [{"index": 0, "embedding": [1]}, {"index": 0, "embedding": [2]}]}', "data.1"),
        ("openai", b'{"data": [{"index": "0", "embedding": [1]}]}', "data.0"),
        ("openai", b'{"data": ["x"]}', "data.0"),
        ("openai", b'{"data": [{"index": 1, "embedding": [1]}]}', "not 0 to n-1"),
        ("openai", _openai_body([["0.1"]]), "vector 0 is not a list of numbers"),
        ("openai", _openai_body([[True]]), "vector 0 is not a list of numbers"),
        ("openai", _openai_body([[]]), "vector 0 is not a list of numbers"),
        ("openai", _openai_body([None]), "vector 0 is not a list of numbers"),
        ("openai", _openai_body([SECRET]), "vector 0 is not a list of numbers"),  # not base64
        ("openai", _openai_body(["AAAAAAA="]), "vector 0 is not a list of numbers"),  # 5 bytes: no float32s
        ("openai", _openai_body([_f32([float("inf")])]), "vector 0 is not a list of numbers"),
        ("ollama", b'{"embedding": [1.0]}', "no embeddings"),
        ("ollama", b'{"embeddings": [[1.0], [2.0, 3.0]]}', "2 vectors for 1 inputs"),
        ("ollama", b'{"embeddings": [[1.0, "x"]]}', "vector 0 is not a list of numbers"),
    ],
)
def test_an_answer_that_cannot_be_trusted_is_an_upstream_error_without_its_content(
    kind: str, body: bytes, why: str
) -> None:
    # GIVEN a 2xx body that cannot be read, or does not line up with the inputs WHEN read
    with pytest.raises(UpstreamError) as caught:
        _read(kind, body)
    # THEN a 502 saying why, in words of the relay's own (nothing of the body is echoed)
    assert caught.value.status_code == 502 and why in caught.value.message
    assert caught.value.message.startswith("Upstream sent an embeddings answer the relay cannot use")
    assert SECRET not in caught.value.message


def test_mixed_dimensions_are_refused() -> None:
    body = json.dumps({"embeddings": [[1.0, 2.0], [3.0]]}).encode()
    with pytest.raises(UpstreamError, match="vector 1 has 1 dimensions, not 2"):
        _read("ollama", body, input=["a", "b"])


def test_a_number_beyond_float32_cannot_be_encoded_as_base64() -> None:
    with pytest.raises(UpstreamError, match="beyond float32"):
        _read("openai", _openai_body([[1e300]]), encoding_format="base64")


@pytest.mark.parametrize(
    ("kind", "body"),
    [("openai", b'{"error": {"message": "model overloaded"}}'), ("ollama", b'{"error": "model overloaded"}')],
)
def test_an_error_in_a_2xx_body_is_the_upstreams_error(kind: str, body: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        _read(kind, body)
    assert caught.value.message == "Upstream error: model overloaded"


@pytest.mark.parametrize(("inputs", "in_thread"), [(1, False), (400, True)])
def test_a_large_answer_is_read_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, inputs: int, in_thread: bool
) -> None:
    # GIVEN a small answer and one past the inline bound (400 vectors of 256 floats)
    request = _request(input=["x"] * inputs)
    body = _openai_body([[0.25] * 256] * inputs)
    assert (len(body) > INLINE_READ_BYTES) is in_thread
    threads: list[str] = []

    def reading(*args: Any) -> EmbeddingsResult:
        threads.append(threading.current_thread().name)
        return read_embeddings_response(*args)

    # WHEN read by the async reader
    result = anyio.run(read_embeddings_answer, "openai", body, request, "client-emb", reading)
    # THEN the answer is the pure reader's, read in a worker thread only when large
    assert result == read_embeddings_response("openai", body, request, "client-emb")
    assert (threads[0] != threading.main_thread().name) is in_thread


# --- post_embeddings over the exchange ----------------------------------------------------------------------


class Body(httpx.AsyncByteStream):
    """A response body in `pieces`; `stall` waits forever after them (noting it), `fail` raises after them. Knows
    whether it was closed."""

    def __init__(self, *pieces: bytes, stall: bool = False, fail: bool = False) -> None:
        self.pieces = pieces
        self.stall = stall
        self.fail = fail
        self.stalled = anyio.Event()
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.fail:
            raise httpx.ReadError("connection reset")
        if self.stall:
            self.stalled.set()
            await anyio.sleep_forever()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()  # as a real connection's close: a cancelled caller must shield it
        self.closed = True


Step = int | type[httpx.TransportError] | Body | tuple[int, dict[str, str]]


class Script:
    """Answers attempt i with `steps[i]` (a status, an exception class raised, a 200 body, a status with headers);
    a 200 with `OK` once the steps run out. Keeps every request."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if self.steps else Body(OK)
        if isinstance(step, type):
            raise step("scripted", request=request)
        if isinstance(step, Body):
            return httpx.Response(200, stream=step)
        status, headers = step if isinstance(step, tuple) else (step, {})
        return httpx.Response(status, headers=headers, json={"error": {"message": f"scripted {status}"}})


OK = _openai_body([[0.5]], {"prompt_tokens": 2, "total_tokens": 2})
PREPARED = UpstreamRequest("http://up.test/v1/embeddings", HEADERS, b'{"model":"route-emb","input":"hello"}')


def _settings(**overrides: Any) -> Settings:
    values = {"upstream_retry_base_s": 0.001, "upstream_retry_max_s": 0.002, "upstream_max_retries": 2}
    return Settings(**{**values, **overrides})


def _post(script: Script, progress: Progress, *, idle_s: float = 5.0, max_bytes: int = 1 << 20) -> bytes:
    async def run() -> bytes:
        exchange = HttpExchange(_settings(), httpx.MockTransport(script))
        try:
            return await post_embeddings(
                exchange, PREPARED, idle_timeout_s=idle_s, progress=progress, max_bytes=max_bytes
            )
        finally:
            await exchange.aclose()

    return anyio.run(run)


def _post_fails(script: Script, **options: Any) -> tuple[UpstreamError, Progress]:
    progress = Progress()
    with pytest.raises(UpstreamError) as caught:
        _post(script, progress, **options)
    return caught.value, progress


def test_the_answer_is_read_whole_and_the_response_closed() -> None:
    # GIVEN an answer in three pieces WHEN posted
    body = Body(OK[:5], OK[5:20], OK[20:])
    script = Script(body)
    progress = Progress()
    # THEN the whole body comes back, from one attempt of the request as prepared, and the response is closed
    assert _post(script, progress) == OK
    assert (progress.attempts, progress.maybe_billed) == (1, 0) and body.closed
    (sent,) = script.requests
    assert (sent.method, str(sent.url), sent.content) == ("POST", PREPARED.url, PREPARED.content)
    assert sent.headers["authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(
    ("step", "failure_class"), [(503, "5xx"), (429, "4xx"), (500, "5xx"), (httpx.ConnectError, "connect")]
)
def test_failures_before_a_model_saw_the_request_are_retried_as_a_stream_open_is(
    step: Step, failure_class: str
) -> None:
    progress = Progress()
    assert _post(Script(step, step), progress) == OK
    assert (progress.attempts, progress.retries, progress.failures) == (3, 2, {failure_class: 2})


def test_the_last_failure_is_raised_once_the_retries_are_spent_with_its_history() -> None:
    failure, progress = _post_fails(Script((429, {"retry-after": "0"}), 429, 429))
    assert failure.code == "upstream_rate_limited" and failure.status_code == 429
    assert (failure.retries, failure.failures, progress.attempts) == (2, {"4xx": 3}, 3)


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, "upstream_invalid_request", "Upstream refused the request: scripted 400"),
        (401, "upstream_error", "Upstream rejected the relay's credentials."),
        (404, "upstream_invalid_request", "Upstream refused the request: scripted 404"),
    ],
)
def test_a_refusal_is_not_retried_and_keeps_the_exchanges_translation(status: int, code: str, message: str) -> None:
    failure, progress = _post_fails(Script(status))
    assert (failure.code, failure.message, failure.upstream_status) == (code, message, status)
    assert progress.attempts == 1


def test_a_body_past_the_cap_is_an_upstream_error_counted_as_billed() -> None:
    body = Body(b"x" * 600, b"x" * 600)
    failure, progress = _post_fails(Script(body), max_bytes=1000)
    assert failure.message == "Upstream sent an embeddings answer larger than 1000 bytes."
    assert progress.maybe_billed == 1 and body.closed


def test_a_connection_broken_in_the_body_is_an_upstream_error_counted_as_billed() -> None:
    body = Body(b'{"data"', fail=True)
    failure, progress = _post_fails(Script(503, body))
    assert failure.message == "Upstream connection failed while sending its answer (ReadError)."
    assert (progress.maybe_billed, failure.retries, failure.failures) == (1, 1, {"5xx": 1})
    assert body.closed


def test_a_body_that_stalls_times_out_on_the_idle_timeout() -> None:
    # GIVEN an upstream that sends part of its answer and then nothing WHEN the idle timeout (tiny here) passes
    body = Body(b'{"data"', stall=True)
    failure, progress = _post_fails(Script(body), idle_s=0.01)
    # THEN it is an upstream timeout, counted as billed, and the response is closed
    assert isinstance(failure, UpstreamTimeout) and failure.status_code == 504
    assert progress.maybe_billed == 1 and body.closed


def test_a_cancel_while_the_body_is_read_closes_the_response() -> None:
    # GIVEN an answer whose body stalls
    body = Body(b'{"data"', stall=True)
    cancelled = False

    async def run() -> None:
        nonlocal cancelled
        exchange = HttpExchange(_settings(), httpx.MockTransport(Script(body)))
        try:
            async with anyio.create_task_group() as tg:

                async def cancel_once_stalled() -> None:
                    await body.stalled.wait()
                    tg.cancel_scope.cancel()  # what the caller's deadline or a client's cancel does

                tg.start_soon(cancel_once_stalled)
                await post_embeddings(exchange, PREPARED, idle_timeout_s=60, progress=Progress())
            cancelled = tg.cancel_scope.cancel_called
        finally:
            await exchange.aclose()

    # WHEN the caller's scope is cancelled during the read
    anyio.run(run)
    # THEN the call ended by the cancel, and the response was closed
    assert cancelled and body.closed


# --- Upstreams.embed and embeddings_route ------------------------------------------------------------------------

TABLE = [
    {"name": "oa", "kind": "openai", "url": "http://oa.test/v1", "api_key_env": "OA_KEY", "models": ["text-*"]},
    {"name": "re", "kind": "openai", "url": "http://re.test/v1", "models": ["alias"], "rewrite": "real-emb"},
    {"name": "ol", "kind": "ollama", "url": "http://ol.test:11434", "models": ["nomic*"], "fallbacks": ["oa"]},
    {
        "name": "rk",
        "kind": "openai",
        "url": "http://rk.test/v1",
        "api_key_env": "RELAY_UPSTREAM_API_KEY",
        "models": ["rk"],
    },
    {"name": "br", "kind": "bedrock", "region": "eu-west-1", "models": ["amazon.*"]},
]


async def _relay_key() -> str:
    return "sk-relay"


def _upstreams(
    handler: Callable[[httpx.Request], httpx.Response], priced: Callable[[str], bool] | None = None
) -> Upstreams:
    table = load_table(json.dumps(TABLE), None, {"OA_KEY": "sk-oa"}, relay_key_stored=True)
    return Upstreams(
        _settings(upstream_max_retries=1),
        table,
        default_key=_relay_key,
        transport=httpx.MockTransport(handler),
        dialect_factory=lambda spec: OpenAIDialect("http://unused.test/v1"),  # chat dialects play no part here
        priced=priced,
    )


def _embed(
    script: Script, model: str, priced: Callable[[str], bool] | None = None, **fields: Any
) -> tuple[EmbeddingsResult, Progress]:
    request = validate_embeddings_request({"model": model, "input": "hello", **fields}, allowed_models=None)

    async def run() -> tuple[EmbeddingsResult, Progress]:
        upstreams = _upstreams(script, priced)
        progress = Progress()
        try:
            return await upstreams.embed(request, "req_emb", progress), progress
        finally:
            await upstreams.aclose()

    return anyio.run(run)


def test_embed_asks_the_models_upstream_with_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OA_KEY", "sk-oa")
    script = Script()
    # GIVEN a model of an openai upstream whose key is in OA_KEY WHEN embedded
    result, progress = _embed(script, "text-embedding-3-small")
    # THEN its /embeddings got the client's request with the key and the relay's request id
    (sent,) = script.requests
    assert str(sent.url) == "http://oa.test/v1/embeddings"
    assert sent.headers["authorization"] == "Bearer sk-oa" and sent.headers["x-request-id"] == "req_emb"
    assert json.loads(sent.content) == {"model": "text-embedding-3-small", "input": "hello"}
    # AND the answer names the client's model, the upstream that answered and the model it is priced as
    assert result.body["model"] == "text-embedding-3-small" and result.prompt_tokens == 2
    assert (result.upstream, result.billed_as, progress.upstream) == ("oa", "text-embedding-3-small", "oa")


def test_embed_takes_the_relays_own_key_for_an_entry_that_names_it() -> None:
    script = Script()
    _embed(script, "rk")
    assert script.requests[0].headers["authorization"] == "Bearer sk-relay"


def test_a_rewritten_model_is_sent_and_priced_as_the_route_says() -> None:
    # GIVEN an entry that sends another name, which has a price WHEN embedded
    script = Script()
    result, _ = _embed(script, "alias", priced=lambda model: model == "real-emb")
    # THEN the upstream got its name, the client sees its own, and the answer is priced as the name sent
    assert json.loads(script.requests[0].content)["model"] == "real-emb"
    assert (result.body["model"], result.billed_as) == ("alias", "real-emb")
    assert "authorization" not in script.requests[0].headers  # an entry without a key sends none
    # AND without a price for it, the client's model is what is priced
    assert _embed(Script(), "alias")[0].billed_as == "alias"


def test_embed_speaks_ollamas_api_to_an_ollama_upstream() -> None:
    answer = json.dumps({"embeddings": [[0.5, 0.25]], "prompt_eval_count": 3}).encode()
    script = Script(Body(answer))
    result, _ = _embed(script, "nomic-embed-text", encoding_format="base64")
    assert str(script.requests[0].url) == "http://ol.test:11434/api/embed"
    assert _from_b64(result.body["data"][0]["embedding"]) == [0.5, 0.25]
    assert (result.prompt_tokens, result.upstream) == (3, "ol")


def test_there_is_no_fallback_for_embeddings() -> None:
    # GIVEN an ollama upstream with a fallback, failing in a way a chat stream would fall back from
    script = Script(503, 503)
    with pytest.raises(UpstreamError) as caught:
        _embed(script, "nomic-embed-text")
    # THEN only its own retries were made, and the failure names it
    assert [request.url.host for request in script.requests] == ["ol.test", "ol.test"]
    assert caught.value.upstream == "ol"


def test_an_unusable_answer_names_the_upstream_and_counts_as_billed() -> None:
    async def run() -> tuple[UpstreamError, Progress]:
        upstreams = _upstreams(Script(Body(b"{}")))
        progress = Progress()
        request = validate_embeddings_request({"model": "rk", "input": "x"}, allowed_models=None)
        try:
            await upstreams.embed(request, "req_emb", progress)
        except UpstreamError as failure:
            return failure, progress
        finally:
            await upstreams.aclose()
        raise AssertionError("the answer was used")

    failure, progress = anyio.run(run)
    assert (failure.upstream, progress.maybe_billed) == ("rk", 1)


@pytest.mark.parametrize(
    ("fields", "error", "param"),
    [
        ({"model": "amazon.titan-embed-text-v2:0"}, InvalidRequest, "model"),  # bedrock: no embeddings here
        ({"model": "unknown"}, ModelNotAllowed, "model"),
        ({"model": "nomic-embed-text", "input": [1, 2]}, InvalidRequest, "input"),  # ollama takes no token ids
        ({"model": "nomic-embed-text", "keep_alive": "5m"}, InvalidRequest, "keep_alive"),
    ],
)
def test_the_route_check_refuses_before_anything_is_sent(
    fields: dict[str, Any], error: type[Exception], param: str
) -> None:
    # GIVEN a request no upstream can take as it is
    script = Script()
    request = validate_embeddings_request({"input": "hello", **fields}, allowed_models=None)

    async def run() -> None:
        upstreams = _upstreams(script)
        try:
            # WHEN checked (sync, before admission) THEN it is refused naming the field
            with pytest.raises(error) as caught:
                upstreams.embeddings_route(request)
            assert getattr(caught.value, "param", None) == param
            # AND embed refuses it the same way
            with pytest.raises(error):
                await upstreams.embed(request, "req_emb")
        finally:
            await upstreams.aclose()

    anyio.run(run)
    # AND no upstream was asked
    assert script.requests == []


def test_the_route_of_a_model_is_its_tables_first() -> None:
    async def run() -> None:
        upstreams = _upstreams(Script())
        try:
            request = validate_embeddings_request({"model": "alias", "input": "x"}, allowed_models=None)
            route = upstreams.embeddings_route(request)
            assert (route.name, route.model) == ("re", "real-emb")
        finally:
            await upstreams.aclose()

    anyio.run(run)


def test_ollama_is_not_sent_the_end_user_which_stays_on_the_record() -> None:
    _, body = _sent("ollama", _request(user="end-user-7"))
    assert "user" not in body and body["input"] == ["hello"]

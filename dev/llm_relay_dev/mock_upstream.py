"""Mock upstream: a chat server for `make dev`, tests and the benchmark, in three shapes with the same words,
faults and records: OpenAI SSE at `POST /v1/chat/completions`, Ollama's NDJSON at `POST /api/chat` (the Ollama
root is the base URL without `/v1`), and this project's own NDJSON output at `POST /ndjson/chat` (see
`mock_ndjson`). The NDJSON modes always stream. Embeddings, in OpenAI's shape at `POST /v1/embeddings` and Ollama's
at `POST /api/embed`, and OpenAI's Responses stream at `POST /v1/responses` (see `mock_responses`), take the same
faults and are recorded the same.

Behaviour comes from `MockConfig` defaults, overridden per request by an optional `mock` object in the
request body (the relay forwards unknown fields to the openai kind), e.g.
    {"mock": {"tokens": 50, "chunk_delay_ms": 5, "ttft_ms": 100, "finish_reason": "length"}}
or, when there is no `mock` object, by a directive: the last system message whose text is `mock:` and a JSON
object, e.g. `{"role": "system", "content": "mock: {\"drop_after\": 3}"}` (the Ollama kind refuses unknown
fields, so one test drives every kind this way).
Faults: `status` (answer that HTTP status), `fail_first` (the first N attempts with the same `id` get 503),
`drop_after` (close the connection after N chunks), `stall_after` (stop sending after N chunks),
`malformed_after` (send a broken event after N chunks), `no_finish` (end without finish_reason or [DONE]),
`headers_delay_ms` (hold the response headers back that long),
`error_after` (send an `{"error": …}` event after N chunks). `finish_reason` is Ollama's `done_reason`, and
`no_finish` leaves out Ollama's `done` line and the NDJSON summary line. `tool_args` (openai kind only): a tool
call after the text, its arguments streamed like `text`, ending `tool_calls`. `resend_every` (openai kind): the
text's events numbered with SSE `id:` lines, every Nth sent twice (a provider resending an event). `markdown`: a
deterministic markdown document of about that many characters (`mock_markdown`), streamed like `text`.
The answer is the mock's WORDS unless `text` gives it: that text, streamed a word (with the space before it) per
chunk, or `chunk_chars` characters per chunk (then `tokens` is ignored).

Every request is recorded by its `x-request-id` (the relay sends its own): chunks sent, whether it
completed, and when (monotonic clock) the client disconnected; `GET /mock/requests/{id}` returns it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .mock_markdown import markdown_document
from .mock_ndjson import OllamaShape, RelayNDJSONShape, Shape, ShapeFactory

WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")
_WORD = re.compile(r"\s*\S+|\s+$")


def answer_pieces(opts: dict[str, Any], default_tokens: int) -> list[str]:
    """The answer's chunks of text: `text` cut a word (or `chunk_chars` characters) a chunk, else `tokens` WORDS."""
    text = markdown_document(opts["markdown"]) if isinstance(opts.get("markdown"), int) else opts.get("text")
    if not isinstance(text, str):
        return [WORDS[i % len(WORDS)] for i in range(int(opts.get("tokens", default_tokens)))]
    size = opts.get("chunk_chars")
    if isinstance(size, int) and size > 0:
        return [text[i : i + size] for i in range(0, len(text), size)]
    return _WORD.findall(text)


class MockFault(Exception):
    """A fault the mock was asked for (`drop_after`): raised so that uvicorn aborts the connection, and logged by
    `FaultLogFilter` as the one line it is, not as a crash."""


class FaultLogFilter(logging.Filter):
    """On uvicorn's error logger: its "Exception in ASGI application" record for a `MockFault` becomes one
    WARNING line naming the fault, without the traceback; every other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = _fault(record.exc_info[1] if record.exc_info else None)
        if error is not None:
            record.name, record.msg, record.args, record.exc_info = "mock_upstream", str(error), (), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _fault(error: BaseException | None) -> MockFault | None:
    """The `MockFault` an error is, or that a task group wrapped it in alone."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, MockFault) else None


async def stream_watching_disconnect(
    record: RequestRecord, receive: Receive, stream: Callable[[], Awaitable[None]]
) -> None:
    """Run `stream` (the body's messages) while watching for the client's disconnect: the moment it comes, the
    stream stops and the record says when (a mock upstream stops generating for nobody, as a real one would).
    uvicorn also reports a disconnect once a response is complete: that one is not the client leaving."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not record.completed:
                record.disconnected_at = time.monotonic()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            await stream()
        except OSError:
            record.disconnected_at = record.disconnected_at or time.monotonic()
        tg.cancel_scope.cancel()


def record_routes(requests: dict[str, RequestRecord]) -> list[Route]:
    """`GET /mock/requests/{id}` (what a test server recorded of a request, 404 when it never saw it), `GET
    /mock/requests` (the ids of every request it got, in order) and `GET /healthz`: the same on every test server."""

    async def list_records(request: Request) -> Response:
        return JSONResponse(list(requests))

    async def get_record(request: Request) -> Response:
        record = requests.get(request.path_params["request_id"])
        if record is None:
            return JSONResponse({"error": "unknown"}, status_code=404)
        return JSONResponse(asdict(record))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return [
        Route("/mock/requests", list_records, methods=["GET"]),
        Route("/mock/requests/{request_id}", get_record, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]


def install_fault_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, FaultLogFilter) for f in logger.filters):
        logger.addFilter(FaultLogFilter())


@dataclass
class MockConfig:
    tokens: int = 20
    chunk_delay_ms: float = 10.0
    ttft_ms: float = 50.0
    finish_reason: str = "stop"


@dataclass
class RequestRecord:
    request_id: str
    started_at: float
    stream: bool
    client_port: int | None = None
    chunks_sent: int = 0
    completed: bool = False
    disconnected_at: float | None = None


@dataclass
class MockState:
    config: MockConfig = field(default_factory=MockConfig)
    requests: dict[str, RequestRecord] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    # Bodies as received (the tests check what reached the upstream).
    bodies: list[dict[str, Any]] = field(default_factory=list)
    # Headers as received (lower-cased names), minus Authorization.
    headers: list[dict[str, str]] = field(default_factory=list)


def _chunk(cid: str, model: str, created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _prompt_tokens(body: dict[str, Any]) -> int:
    """A token per four characters of the messages' text (a `mock:` directive is not prompt), at least one: the
    same count in every mode and in the local Bedrock server, so one prompt costs the same whatever the kind."""
    texts = [str(m.get("content") or "") for m in body.get("messages", []) if isinstance(m, dict)]
    return max(1, len("".join(t for t in texts if not t.startswith("mock:"))) // 4)


def mock_options(body: dict[str, Any]) -> dict[str, Any]:
    """The faults asked for: `body["mock"]`, else the last `mock: {...}` system message; ValueError when that
    directive is not a JSON object."""
    if isinstance(body.get("mock"), dict):
        return dict(body["mock"])
    for message in reversed(body.get("messages") or []):
        text = _text(message.get("content")) if isinstance(message, dict) and message.get("role") == "system" else ""
        if text.startswith("mock:"):
            try:
                options = json.loads(text[len("mock:") :])
            except json.JSONDecodeError:
                options = None
            if not isinstance(options, dict):
                raise ValueError("mock: the directive is not a JSON object")
            return options
    return {}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


class SSEShape:
    """OpenAI's chat-completion chunks as server-sent events, ending in `data: [DONE]`."""

    media_type = "text/event-stream"

    def __init__(self, model: str, created: int, request_id: str) -> None:
        self.model = model
        self.created = created

    def _event(self, obj: Any) -> bytes:
        data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
        return f"data: {data}\n\n".encode()

    def start(self) -> list[bytes]:
        return [
            self._event(_chunk("chatcmpl-mock", self.model, self.created, {"role": "assistant", "content": ""}, None))
        ]

    def token(self, text: str) -> bytes:
        return self._event(_chunk("chatcmpl-mock", self.model, self.created, {"content": text}, None))

    def tool_call(self, arguments: str, first: bool) -> bytes:
        """A piece of one tool call's arguments (the first piece with the call's id and name)."""
        call: dict[str, Any] = {"index": 0, "function": {"arguments": arguments}}
        if first:
            call.update({"id": "call_mock", "type": "function"})
            call["function"]["name"] = "mock_tool"
        return self._event(_chunk("chatcmpl-mock", self.model, self.created, {"tool_calls": [call]}, None))

    def malformed(self) -> bytes:
        return self._event('{"id": "broken", "choices": [')

    def error(self) -> bytes:
        return self._event({"error": {"message": "mock upstream failure", "type": "server_error"}})

    def end(self, finish: str, usage: dict[str, int]) -> list[bytes]:
        chunk = _chunk("chatcmpl-mock", self.model, self.created, {}, finish)
        usage_chunk = {k: chunk[k] for k in ("id", "object", "created", "model")} | {"choices": [], "usage": usage}
        return [self._event(chunk), self._event(usage_chunk), self._event("[DONE]")]

    def error_body(self, message: str, kind: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind}}


class _MockStream:
    """Streams one mock answer and notices the client's disconnect the moment it happens."""

    def __init__(
        self, record: RequestRecord, body: dict[str, Any], opts: dict[str, Any], config: MockConfig, shape: Shape
    ) -> None:
        self.record = record
        self.body = body
        self.opts = opts
        self.config = config
        self.shape = shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", self.shape.media_type.encode()), (b"cache-control", b"no-cache")],
            }
        )
        await stream_watching_disconnect(self.record, receive, functools.partial(self._stream, send))

    async def _stream(self, send: Send) -> None:
        opts, config, shape = self.opts, self.config, self.shape
        pieces = answer_pieces(opts, config.tokens)
        tokens = len(pieces)
        delay = float(opts.get("chunk_delay_ms", config.chunk_delay_ms)) / 1000
        ttft = float(opts.get("ttft_ms", config.ttft_ms)) / 1000
        finish = str(opts.get("finish_reason", config.finish_reason))

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await anyio.sleep(ttft)
        for data in shape.start():
            await write(data)
        for i in range(tokens):
            if i and delay:
                await anyio.sleep(delay)
            if i == opts.get("drop_after"):
                raise MockFault(f"dropped the connection after {i} chunks (drop_after)")  # uvicorn aborts it
            if i == opts.get("stall_after"):
                await anyio.sleep(3600)
            if i == opts.get("malformed_after"):
                await write(shape.malformed())
            if i == opts.get("error_after"):
                await write(shape.error())
                break
            data = shape.token(pieces[i])
            resend = int(opts.get("resend_every") or 0) if isinstance(shape, SSEShape) else 0
            if resend:  # numbered SSE events, every `resend_every`-th sent twice (a provider resending it)
                data = f"id: {i}\n".encode() + data
            await write(data)
            if resend and (i + 1) % resend == 0:
                await write(data)
            self.record.chunks_sent += 1
        tool_args = opts.get("tool_args")
        if isinstance(tool_args, str) and isinstance(shape, SSEShape):  # a tool call after the text (openai kind)
            for i, piece in enumerate(answer_pieces({**opts, "text": tool_args}, 0)):
                await write(shape.tool_call(piece, first=i == 0))
                self.record.chunks_sent += 1
            finish = "tool_calls"
        if not opts.get("no_finish"):
            prompt = _prompt_tokens(self.body)
            completion = self.record.chunks_sent
            usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            for data in shape.end(finish, usage):
                await write(data)
        self.record.completed = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def create_mock_app(config: MockConfig | None = None) -> Starlette:
    from .mock_embeddings import embedding_routes  # they import this module: imported once this one is loaded
    from .mock_responses import responses_routes

    install_fault_filter()
    state = MockState(config=config or MockConfig())

    def chat(shape_of: ShapeFactory, always_streams: bool) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            return await _answer(request, state, shape_of, always_streams)

        return handle

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat(SSEShape, always_streams=False), methods=["POST"]),
            Route("/api/chat", chat(OllamaShape, always_streams=True), methods=["POST"]),
            Route("/ndjson/chat", chat(RelayNDJSONShape, always_streams=True), methods=["POST"]),
            *embedding_routes(state),
            *responses_routes(state),
            *record_routes(state.requests),
        ]
    )
    app.state.mock = state
    return app


async def _answer(request: Request, state: MockState, shape_of: ShapeFactory, always_streams: bool) -> Response:
    """One chat request in any mode: record it, apply the faults that come before the body, then stream."""
    body = json.loads(await request.body())
    state.bodies.append(body)
    state.headers.append({k: v for k, v in request.headers.items() if k != "authorization"})
    request_id = request.headers.get("x-request-id") or f"anon-{len(state.requests)}"
    shape = shape_of(str(body.get("model", "mock")), int(time.time()), request_id)
    try:
        opts = mock_options(body)
    except ValueError as exc:
        return JSONResponse(shape.error_body(str(exc), "invalid_request_error"), status_code=400)
    streams = always_streams or bool(body.get("stream"))
    record = RequestRecord(
        request_id=request_id,
        started_at=time.monotonic(),
        stream=streams,
        client_port=request.client.port if request.client else None,
    )
    state.requests[request_id] = record
    refused = await refusal(request, state, shape, opts, record)
    if refused is not None:
        return refused
    stream = _MockStream(record, body, opts, state.config, shape)
    if streams:
        return stream  # type: ignore[return-value]
    return await _non_streaming(stream)


async def refusal(
    request: Request, state: MockState, shape: Shape, opts: dict[str, Any], record: RequestRecord
) -> Response | None:
    """The faults that answer before any body: `fail_first`, `headers_delay_ms` (a client that left), `status`."""
    if "fail_first" in opts:
        attempt_key = str(opts.get("id", record.request_id))
        state.attempts[attempt_key] = state.attempts.get(attempt_key, 0) + 1
        if state.attempts[attempt_key] <= int(opts["fail_first"]):
            body = shape.error_body("mock: temporarily unavailable", "server_error")
            return JSONResponse(body, status_code=503, headers={"retry-after": "0"})
    held_s = float(opts.get("headers_delay_ms") or 0) / 1000  # a provider that holds its headers back
    if held_s and not await hold_headers(request, record, held_s):
        return Response(status_code=499)  # the relay closed the request while we held the headers
    if "status" in opts:
        status = int(opts["status"])
        extra = {"retry-after": str(opts["retry_after"])} if "retry_after" in opts else None
        return JSONResponse(shape.error_body(f"mock: status {status}", "mock_error"), status_code=status, headers=extra)
    return None


async def hold_headers(request: Request, record: RequestRecord, delay_s: float) -> bool:
    """Hold the response headers back for `delay_s`, noting a disconnect meanwhile; False if the client left."""
    with anyio.move_on_after(delay_s):
        while (await request.receive())["type"] != "http.disconnect":
            pass
        record.disconnected_at = time.monotonic()
        return False
    return True


async def _non_streaming(stream: _MockStream) -> Response:
    """`stream: false` against the mock: the same tokens, as one chat.completion body."""
    opts, config = stream.opts, stream.config
    pieces = answer_pieces(opts, config.tokens)
    tokens = len(pieces)
    await anyio.sleep(float(opts.get("ttft_ms", config.ttft_ms)) / 1000)
    content = "".join(pieces)
    prompt = _prompt_tokens(stream.body)
    stream.record.chunks_sent = tokens
    stream.record.completed = True
    return JSONResponse(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": stream.body.get("model", "mock"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": opts.get("finish_reason", config.finish_reason),
                }
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens},
        }
    )


@contextmanager
def mock_upstream_in_thread() -> Iterator[str]:
    """The mock on an ephemeral loopback port for the length of the block; yields its base URL (ending in /v1),
    the value `RELAY_UPSTREAM_URL` takes. A real socket keeps TTFT and disconnects real."""
    from .serving import serve_in_thread

    with serve_in_thread(create_mock_app()) as base:
        yield f"{base}/v1"


def main() -> None:
    """`python -m llm_relay_dev.mock_upstream [port] [--host H]`: serve the mock (default 127.0.0.1:8081; `--host
    0.0.0.0` lets `sam local invoke`'s container reach it)."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description="OpenAI-shaped mock upstream")
    parser.add_argument("port", type=int, nargs="?", default=8081)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(create_mock_app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

"""The mock upstream's Responses API: `POST /v1/responses`, streaming OpenAI's event sequence with the provider's
own ids (`resp_mock…`, `msg_mock…`, `fc_mock…`) and sequence numbers, or answering the Response object when
`stream` is not true; recorded like the chat routes, with the same words and faults.

A stream: `response.created`, `response.in_progress`, the message item (`output_item.added`,
`content_part.added`, an `output_text.delta` per piece of the answer, `output_text.done`, `content_part.done`,
`output_item.done`), then with `tool_args` a `function_call` item whose arguments arrive as deltas, then
`response.completed` with the usage, or `response.incomplete` for `finish_reason` `length` (`max_output_tokens`)
or `content_filter`.

Faults come from the body's `mock` object, else from `instructions` that are `mock:` and a JSON object, else from
the last system or developer message of `input` that is (the relay refuses unknown fields in a Responses request,
so a test drives the mock through it this way): `tokens`, `text`, `chunk_chars`, `chunk_delay_ms`, `ttft_ms`,
`finish_reason`, `drop_after`, `stall_after`, `malformed_after`, `error_after` (an `error` event, then the body
ends), `no_finish` (the body ends without a terminal event), `status`/`retry_after`, `fail_first`/`id`,
`headers_delay_ms`, `tool_args`, `resend_every` (every Nth text delta sent twice, with its sequence number). The
prompt is counted as the chat routes count it: a token per four characters of the instructions and input text,
directives excluded, at least one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .mock_upstream import (
    MockConfig,
    MockFault,
    MockState,
    RequestRecord,
    SSEShape,
    answer_pieces,
    refusal,
    stream_watching_disconnect,
)

__all__ = ["ResponsesEvents", "prompt_tokens", "responses_options", "responses_routes"]

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_DIRECTIVE_ROLES = ("system", "developer")


def responses_routes(state: MockState) -> list[Route]:
    """`POST /v1/responses`, recording into `state`."""

    async def handle(request: Request) -> Response:
        return await _answer(request, state)

    return [Route("/v1/responses", handle, methods=["POST"])]


def responses_options(body: dict[str, Any]) -> dict[str, Any]:
    """The faults asked for (see the module docstring); ValueError when a directive is not a JSON object."""
    if isinstance(body.get("mock"), dict):
        return dict(body["mock"])
    directives = [text for text in _texts(body, directives=True) if text.startswith("mock:")]
    if not directives:
        return {}
    try:
        options = json.loads(directives[-1][len("mock:") :])
    except json.JSONDecodeError:
        options = None
    if not isinstance(options, dict):
        raise ValueError("mock: the directive is not a JSON object")
    return options


def prompt_tokens(body: dict[str, Any]) -> int:
    """A token per four characters of the instructions and input text (a `mock:` directive is not prompt)."""
    texts = [text for text in _texts(body, directives=False) if not text.startswith("mock:")]
    return max(1, len("".join(texts)) // 4)


def _texts(body: dict[str, Any], *, directives: bool) -> list[str]:
    """The request's texts in order: its instructions, then its input's; `directives`: only where a directive may
    be (the instructions, system and developer messages)."""
    texts = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    items = body.get("input")
    if isinstance(items, str):
        return texts if directives else [*texts, items]
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict) or (directives and item.get("role") not in _DIRECTIVE_ROLES):
            continue
        content = item.get("content", item.get("output"))
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.append("".join(str(p.get("text", "")) for p in content if isinstance(p, dict)))
    return texts


class ResponsesEvents:
    """One mock response: its events, numbered from 0, and the Response object they build."""

    def __init__(self, body: dict[str, Any], request_id: str, created: int) -> None:
        stem = hashlib.sha256(request_id.encode()).hexdigest()[:24]
        self.body, self.created = body, created
        self.response_id, self.message_id, self.call_item_id = f"resp_mock{stem}", f"msg_mock{stem}", f"fc_mock{stem}"
        self.output: list[dict[str, Any]] = []
        self._sequence = 0

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

    def response(self, status: str, usage: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        body = self.body
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": str(body.get("model", "mock")),
            "output": self.output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": bool(body.get("store", False)),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
            **fields,
        }

    def start(self) -> list[bytes]:
        return [
            self.event("response.created", response=self.response("in_progress")),
            self.event("response.in_progress", response=self.response("in_progress")),
        ]

    def open_message(self) -> list[bytes]:
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        self.output.append(message)
        added = self.event("response.output_item.added", output_index=0, item=message)  # serialized: content []
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        message["content"].append(part)
        return [added, self.event("response.content_part.added", **self._at_text(), part=part)]

    def token(self, text: str) -> bytes:
        self.output[0]["content"][0]["text"] += text
        return self.event("response.output_text.delta", **self._at_text(), delta=text, logprobs=[])

    def close_message(self, status: str) -> list[bytes]:
        message = self.output[0]
        part = message["content"][0]
        message["status"] = status
        return [
            self.event("response.output_text.done", **self._at_text(), text=part["text"], logprobs=[]),
            self.event("response.content_part.done", **self._at_text(), part=part),
            self.event("response.output_item.done", output_index=0, item=message),
        ]

    def open_call(self) -> bytes:
        call = {
            "id": self.call_item_id,
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": "call_mock",
            "name": "mock_tool",
        }
        self.output.append(call)
        return self.event("response.output_item.added", output_index=len(self.output) - 1, item=call)

    def arguments(self, piece: str) -> bytes:
        self.output[-1]["arguments"] += piece
        index = len(self.output) - 1
        return self.event(
            "response.function_call_arguments.delta", item_id=self.call_item_id, output_index=index, delta=piece
        )

    def close_call(self, status: str) -> list[bytes]:
        call, index = self.output[-1], len(self.output) - 1
        call["status"] = status
        return [
            self.event(
                "response.function_call_arguments.done",
                item_id=self.call_item_id,
                output_index=index,
                arguments=call["arguments"],
            ),
            self.event("response.output_item.done", output_index=index, item=call),
        ]

    def end(self, finish: str, usage: dict[str, Any]) -> bytes:
        if finish in _INCOMPLETE:
            details = {"reason": _INCOMPLETE[finish]}
            return self.event(
                "response.incomplete", response=self.response("incomplete", usage, incomplete_details=details)
            )
        return self.event("response.completed", response=self.response("completed", usage))

    def error(self) -> bytes:
        return self.event("error", code="server_error", message="mock upstream failure", param=None)

    def malformed(self) -> bytes:
        return b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "delta": [\n\n'

    def _at_text(self) -> dict[str, Any]:
        return {"item_id": self.message_id, "output_index": 0, "content_index": 0}


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    """The Responses API's usage object."""
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


class _ResponsesStream:
    """Streams one mock response and notices the client's disconnect the moment it happens."""

    def __init__(
        self, record: RequestRecord, events: ResponsesEvents, opts: dict[str, Any], config: MockConfig
    ) -> None:
        self.record, self.events, self.opts, self.config = record, events, opts, config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await stream_watching_disconnect(self.record, receive, functools.partial(self._stream, send))

    async def _stream(self, send: Send) -> None:
        async def write(*data: bytes) -> None:
            await send({"type": "http.response.body", "body": b"".join(data), "more_body": True})

        opts, events = self.opts, self.events
        await anyio.sleep(float(opts.get("ttft_ms", self.config.ttft_ms)) / 1000)
        await write(*events.start(), *events.open_message())
        if await self._text(write):
            finish = str(opts.get("finish_reason", self.config.finish_reason))
            status = "incomplete" if finish in _INCOMPLETE else "completed"
            await write(*events.close_message(status))
            tool_args = opts.get("tool_args")
            if isinstance(tool_args, str):
                await write(events.open_call())
                for piece in answer_pieces({**opts, "text": tool_args}, 0):
                    await write(events.arguments(piece))
                    self.record.chunks_sent += 1
                await write(*events.close_call(status))
                finish = "tool_calls" if status == "completed" else finish
            if not opts.get("no_finish"):
                await write(events.end(finish, _usage(prompt_tokens(events.body), self.record.chunks_sent)))
        self.record.completed = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _text(self, write: Any) -> bool:
        """The answer's text deltas, with the faults that come between them; False after an `error` event."""
        opts = self.opts
        delay = float(opts.get("chunk_delay_ms", self.config.chunk_delay_ms)) / 1000
        for i, piece in enumerate(answer_pieces(opts, self.config.tokens)):
            if i and delay:
                await anyio.sleep(delay)
            if i == opts.get("drop_after"):
                raise MockFault(f"dropped the connection after {i} chunks (drop_after)")  # uvicorn aborts it
            if i == opts.get("stall_after"):
                await anyio.sleep(3600)
            if i == opts.get("malformed_after"):
                await write(self.events.malformed())
            if i == opts.get("error_after"):
                await write(self.events.error())
                return False
            data = self.events.token(piece)
            await write(data)
            if (resend := int(opts.get("resend_every") or 0)) and (i + 1) % resend == 0:
                await write(data)  # a provider resending an event: the same sequence number again
            self.record.chunks_sent += 1
        return True


async def _answer(request: Request, state: MockState) -> Response:
    """Record the request, apply the faults that come before the body, then stream (or answer whole)."""
    body = json.loads(await request.body())
    state.bodies.append(body)
    state.headers.append({k: v for k, v in request.headers.items() if k != "authorization"})
    request_id = request.headers.get("x-request-id") or f"anon-{len(state.requests)}"
    errors = SSEShape(str(body.get("model", "mock")), 0, request_id)  # OpenAI's error bodies
    try:
        opts = responses_options(body)
    except ValueError as exc:
        return JSONResponse(errors.error_body(str(exc), "invalid_request_error"), status_code=400)
    streams = body.get("stream") is True
    port = request.client.port if request.client else None
    record = RequestRecord(request_id=request_id, started_at=time.monotonic(), stream=streams, client_port=port)
    state.requests[request_id] = record
    refused = await refusal(request, state, errors, opts, record)
    if refused is not None:
        return refused
    events = ResponsesEvents(body, request_id, int(time.time()))
    if streams:
        return _ResponsesStream(record, events, opts, state.config)  # type: ignore[return-value]
    return await _whole(record, events, opts, state.config)


async def _whole(record: RequestRecord, events: ResponsesEvents, opts: dict[str, Any], config: MockConfig) -> Response:
    """`stream: false`: the same answer as one Response object."""
    await anyio.sleep(float(opts.get("ttft_ms", config.ttft_ms)) / 1000)
    finish = str(opts.get("finish_reason", config.finish_reason))
    status = "incomplete" if finish in _INCOMPLETE else "completed"
    events.open_message()
    pieces = answer_pieces(opts, config.tokens)
    for piece in pieces:
        events.token(piece)
    events.close_message(status)
    if isinstance(opts.get("tool_args"), str):
        events.open_call()
        for piece in answer_pieces({**opts, "text": opts["tool_args"]}, 0):
            events.arguments(piece)
            record.chunks_sent += 1
        events.close_call(status)
    record.chunks_sent += len(pieces)
    record.completed = True
    fields = {"incomplete_details": {"reason": _INCOMPLETE[finish]}} if status == "incomplete" else {}
    counts = _usage(prompt_tokens(events.body), record.chunks_sent)
    return JSONResponse(events.response(status, counts, **fields))

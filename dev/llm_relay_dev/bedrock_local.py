"""A local Amazon Bedrock `ConverseStream` and `ApplyGuardrail` server, for tests and `make dev`: the real wire
format, no AWS account.

`POST /model/{modelId}/converse-stream` answers `application/vnd.amazon.eventstream` messages as Bedrock does
(messageStart, a contentBlockDelta per word of the mock's WORDS, contentBlockStop, messageStop, metadata with
usage), with real timing, so botocore's own client (pointed here with `endpoint_url`) and the relay's decoder
read what they would read from AWS. Requests must be SigV4-signed for the service `bedrock` (any credentials:
the signature itself is not checked), else 403.

Faults come from a directive: the text of a system block starting with `mock:` and a JSON object, e.g.
    {"system": [{"text": "mock: {\"tokens\": 5, \"exception_after\": 2}"}], ...}
Keys: `tokens` (or `text` and `chunk_chars`, as the OpenAI mock takes them), `ttft_ms`, `chunk_delay_ms`,
`stop_reason` (messageStop's), `tool_call` (a tool name: a toolUse block after the text, stop reason `tool_use`),
`exception_after` (a modelStreamErrorException after N deltas),
`cut_before_stop` (the body ends after the deltas), `no_metadata` (messageStop, then the end),
`throttle` (HTTP 429 ThrottlingException before any event), `fail_first` (429 for the first N attempts with the
same `id`, default the x-request-id), `status` (that HTTP status with a Bedrock-style JSON error),
`stall_after` / `drop_after` (stop sending / abort the connection after N deltas), `headers_delay_ms`.

Every request is recorded by its `x-request-id` as the OpenAI-shaped mock records them (`GET /mock/requests/{id}`).

`POST /guardrail/{guardrailIdentifier}/version/{guardrailVersion}/apply` answers Amazon Bedrock Guardrails'
`ApplyGuardrail` from a rule set (`guardrail_local.py`: the rules, `RELAY_DEV_GUARDRAIL_RULES`, the defaults and
the faults, `guardrail:throttle` and `guardrail:slow` in the assessed text or the config's flags). Every call is
recorded without its text (`GuardrailCall`: source, content items, characters, action, fault):
`state.guardrail_calls` in process, `GET /mock/guardrail/calls` over HTTP.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .eventstream import encode_event, encode_exception
from .guardrail_local import GuardrailCall, GuardrailRule, apply_rules, fault_for, rules_from_env
from .mock_upstream import (
    MockFault,
    RequestRecord,
    answer_pieces,
    hold_headers,
    install_fault_filter,
    record_routes,
    stream_watching_disconnect,
)

__all__ = ["BedrockLocalConfig", "bedrock_local_in_thread", "create_bedrock_app", "main"]

EVENTSTREAM = "application/vnd.amazon.eventstream"
THROTTLING_TYPE = "ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/"
_ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


@dataclass
class BedrockLocalConfig:
    tokens: int = 20
    chunk_delay_ms: float = 10.0
    ttft_ms: float = 50.0
    stop_reason: str = "end_turn"
    guardrail_rules: tuple[GuardrailRule, ...] = field(default_factory=rules_from_env)
    guardrail_throttle: bool = False  # every ApplyGuardrail call throttled (else: `guardrail:throttle` in the text)
    guardrail_slow: bool = False  # every ApplyGuardrail answer held back (else: `guardrail:slow` in the text)
    guardrail_slow_ms: float = 10_000.0  # how long a slow answer is held, unless the client leaves first


@dataclass
class BedrockLocalState:
    config: BedrockLocalConfig = field(default_factory=BedrockLocalConfig)
    requests: dict[str, RequestRecord] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    bodies: list[dict[str, Any]] = field(default_factory=list)  # as received, with the model id as `modelId`
    guardrail_calls: list[GuardrailCall] = field(default_factory=list)


def directive(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of the first system block whose text starts with `mock:` ({} without one)."""
    for block in body.get("system") or []:
        text = block.get("text") if isinstance(block, dict) else None
        if isinstance(text, str) and text.startswith("mock:"):
            opts = json.loads(text[len("mock:") :])
            return opts if isinstance(opts, dict) else {}
    return {}


def prompt_tokens(body: dict[str, Any]) -> int:
    """As the mock counts them: a token per four characters of prompt text, at least one."""
    texts = [b.get("text", "") for b in body.get("system") or [] if not str(b.get("text", "")).startswith("mock:")]
    for message in body.get("messages") or []:
        texts += [str(b["text"]) for b in message.get("content") or [] if isinstance(b, dict) and "text" in b]
    return max(1, len("".join(texts)) // 4)


def signed_for_bedrock(authorization: str) -> bool:
    """A SigV4 Authorization header whose credential scope is the `bedrock` service."""
    if not authorization.startswith("AWS4-HMAC-SHA256 "):
        return False
    credential = next((p for p in authorization.split() if p.startswith("Credential=")), "")
    return credential.rstrip(",").endswith("/bedrock/aws4_request")


def bedrock_error(status: int, message: str, error_type: str | None = None) -> Response:
    """An error as Bedrock answers one: a JSON `message` and the type in `x-amzn-ErrorType`."""
    kind = error_type or _ERROR_TYPES.get(status, "InternalServerException")
    return JSONResponse({"message": message}, status_code=status, headers={"x-amzn-ErrorType": kind})


class _ConverseStream:
    """Streams one ConverseStream answer and notices the client's disconnect the moment it happens."""

    def __init__(self, record: RequestRecord, body: dict[str, Any], opts: dict[str, Any], config: BedrockLocalConfig):
        self.record = record
        self.body = body
        self.opts = opts
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", EVENTSTREAM.encode()), (b"x-amzn-requestid", self.record.request_id.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await stream_watching_disconnect(self.record, receive, functools.partial(self._stream, send))

    async def _stream(self, send: Send) -> None:
        async def emit(message: bytes) -> None:
            await send({"type": "http.response.body", "body": message, "more_body": True})

        opts, config = self.opts, self.config
        await anyio.sleep(float(opts.get("ttft_ms", config.ttft_ms)) / 1000)
        await emit(encode_event("messageStart", {"role": "assistant"}))
        if await self._deltas(emit):
            await self._finish(emit)
        self.record.completed = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _deltas(self, emit: Any) -> bool:
        """The text deltas; False when a fault ended the stream early."""
        opts = self.opts
        delay = float(opts.get("chunk_delay_ms", self.config.chunk_delay_ms)) / 1000
        pieces = answer_pieces(opts, self.config.tokens)
        for i in range(len(pieces)):
            if i and delay:
                await anyio.sleep(delay)
            if i == opts.get("drop_after"):
                raise MockFault(f"dropped the connection after {i} events (drop_after)")  # uvicorn aborts it
            if i == opts.get("stall_after"):
                await anyio.sleep(3600)
            if i == opts.get("exception_after"):
                await emit(encode_exception("modelStreamErrorException", "mock: the model stream failed"))
                return False
            delta = {"delta": {"text": pieces[i]}, "contentBlockIndex": 0}
            await emit(encode_event("contentBlockDelta", delta))
            self.record.chunks_sent += 1
        await emit(encode_event("contentBlockStop", {"contentBlockIndex": 0}))
        return not opts.get("cut_before_stop")

    async def _finish(self, emit: Any) -> None:
        stop_reason = str(self.opts.get("stop_reason", self.config.stop_reason))
        if "tool_call" in self.opts:
            await self._tool_use(emit, str(self.opts["tool_call"]))
            stop_reason = "tool_use"
        await emit(encode_event("messageStop", {"stopReason": stop_reason}))
        if self.opts.get("no_metadata"):
            return
        prompt, output = prompt_tokens(self.body), self.record.chunks_sent
        usage = {"inputTokens": prompt, "outputTokens": output, "totalTokens": prompt + output}
        await emit(encode_event("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}))

    async def _tool_use(self, emit: Any, name: str) -> None:
        start = {"start": {"toolUse": {"toolUseId": "tooluse_mock", "name": name}}, "contentBlockIndex": 1}
        await emit(encode_event("contentBlockStart", start))
        for fragment in ('{"city": ', '"Paris"}'):
            await emit(
                encode_event("contentBlockDelta", {"delta": {"toolUse": {"input": fragment}}, "contentBlockIndex": 1})
            )
        await emit(encode_event("contentBlockStop", {"contentBlockIndex": 1}))


def create_bedrock_app(config: BedrockLocalConfig | None = None) -> Starlette:
    install_fault_filter()
    state = BedrockLocalState(config=config or BedrockLocalConfig())

    async def converse_stream(request: Request) -> Response:
        if not signed_for_bedrock(request.headers.get("authorization", "")):
            return bedrock_error(
                403, "mock: the request is not SigV4-signed for bedrock", "UnrecognizedClientException"
            )
        body = json.loads(await request.body())
        body["modelId"] = request.path_params["model_id"]
        state.bodies.append(body)
        request_id = request.headers.get("x-request-id") or f"anon-{len(state.requests)}"
        record = RequestRecord(
            request_id, time.monotonic(), True, client_port=request.client.port if request.client else None
        )
        state.requests[request_id] = record
        opts = directive(body)
        refusal = _refusal(state, opts, request_id)
        if refusal is not None:
            return refusal
        held_s = float(opts.get("headers_delay_ms") or 0) / 1000
        if held_s and not await hold_headers(request, record, held_s):
            return Response(status_code=499)  # the client closed the request while the headers were held
        if "status" in opts:
            status = int(opts["status"])
            return bedrock_error(status, f"mock: status {status}")
        return _ConverseStream(record, body, opts, state.config)  # type: ignore[return-value]

    async def guardrail_calls(request: Request) -> Response:
        return JSONResponse([asdict(call) for call in state.guardrail_calls])

    app = Starlette(
        routes=[
            Route("/model/{model_id:path}/converse-stream", converse_stream, methods=["POST"]),
            Route(
                "/guardrail/{guardrail}/version/{version}/apply",
                functools.partial(apply_guardrail, state),
                methods=["POST"],
            ),
            Route("/mock/guardrail/calls", guardrail_calls, methods=["GET"]),
            *record_routes(state.requests),
        ]
    )
    app.state.bedrock = state
    return app


async def apply_guardrail(state: BedrockLocalState, request: Request) -> Response:
    """`ApplyGuardrail`: the rule set's answer, or the fault the text or the config asks for."""
    if not signed_for_bedrock(request.headers.get("authorization", "")):
        return bedrock_error(403, "mock: the request is not SigV4-signed for bedrock", "UnrecognizedClientException")
    body = json.loads(await request.body())
    texts = [str(b["text"]["text"]) for b in body.get("content") or [] if isinstance(b.get("text"), dict)]
    source = body.get("source")
    if source not in ("INPUT", "OUTPUT") or not texts:
        return bedrock_error(400, "mock: ApplyGuardrail needs a source (INPUT or OUTPUT) and text content")
    call = GuardrailCall(
        request.path_params["guardrail"], request.path_params["version"], source, len(texts), sum(map(len, texts))
    )
    state.guardrail_calls.append(call)
    config = state.config
    call.fault = fault_for(texts, throttle=config.guardrail_throttle, slow=config.guardrail_slow)
    if call.fault == "throttle":
        return bedrock_error(429, "mock: too many requests", THROTTLING_TYPE)
    if call.fault == "slow" and not await _held(request, config.guardrail_slow_ms / 1000):
        call.client_left = True
        return Response(status_code=499)  # nobody reads it
    answer = apply_rules(config.guardrail_rules, texts)
    call.action = answer["action"]
    return JSONResponse(answer)


async def _held(request: Request, delay_s: float) -> bool:
    """Hold the answer back for `delay_s`; False as soon as the client leaves (its timeout) instead."""
    with anyio.move_on_after(delay_s):
        while (await request.receive())["type"] != "http.disconnect":
            pass
        return False
    return True


def _refusal(state: BedrockLocalState, opts: dict[str, Any], request_id: str) -> Response | None:
    """The throttling answer `throttle` or `fail_first` asks for on this attempt (None: answer normally)."""
    if opts.get("throttle"):
        return bedrock_error(429, "mock: too many requests", THROTTLING_TYPE)
    if "fail_first" in opts:
        key = str(opts.get("id", request_id))
        state.attempts[key] = state.attempts.get(key, 0) + 1
        if state.attempts[key] <= int(opts["fail_first"]):
            return bedrock_error(429, "mock: too many requests", THROTTLING_TYPE)
    return None


@contextmanager
def bedrock_local_in_thread(config: BedrockLocalConfig | None = None) -> Iterator[str]:
    """The server on an ephemeral loopback port for the length of the block; yields its base URL, the
    `endpoint_url` of a `bedrock-runtime` client (for ConverseStream and ApplyGuardrail alike)."""
    from .serving import serve_in_thread

    with serve_in_thread(create_bedrock_app(config)) as base:
        yield base


def main() -> None:
    """`python -m llm_relay_dev.bedrock_local [port] [--host H]`: serve it (default 127.0.0.1:8082)."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description="Local Amazon Bedrock ConverseStream and ApplyGuardrail server")
    parser.add_argument("port", type=int, nargs="?", default=8082)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(create_bedrock_app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

"""A local stand-in for a Lambda function URL with response streaming (`make dev LAMBDA=1`, integration tests).

Lambda's front end is not obtainable offline, and the Runtime Interface Emulator buffers streamed responses, so
neither can show how the relay behaves on Lambda. This ASGI app imitates what matters for cancellation, deadlines
and heartbeats, in front of relays started on demand ("execution environments"):

- the client's disconnect is **not passed on**: the front keeps reading the relay's response to its end and
  discards it (AWS: a function-URL stream is not interrupted when the client's connection breaks);
- `x-amzn-lambda-context` carries the invocation's request id and its deadline (now + the function timeout), as
  the web adapter passes them; a client's own header of that name is replaced; at the deadline the invocation
  ends: the response is cut and the relay's connection closed (the sandbox would be frozen);
- a request body over 6 MB is refused with 413, as Lambda's front refuses it, before any environment sees it;
- the response goes at full speed for its first 6 MB, then at 2 MB/s;
- one request at a time per environment; another request starts another environment, up to a limit (then 429,
  Lambda's throttle). Every invocation gives its environment back when it ends, however it ends: an environment
  that failed to start, or that the front could not reach, is counted off and replaced on demand, and the client
  gets 502 (Lambda's answer to a function error), so a failure never eats a slot for good.

What it cannot imitate: the web adapter itself (it relays over loopback like the front does, but its buffering,
readiness check and error answers are not reproduced), the sandbox freeze between invocations, cold starts, the
200 MB response cap, and the network between a real client and AWS.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass

import anyio
import anyio.to_thread
import httpx
from starlette.types import Message, Receive, Scope, Send

MB = 1024 * 1024
HOP_BY_HOP = {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"x-amzn-lambda-context"}

logger = logging.getLogger(__name__)

RELAY_RECEIVE_BUFFER = 64 * 1024
FUNCTION_ERROR = "Internal Server Error"  # what a function URL answers when the function itself failed
StartEnvironment = Callable[[], AbstractContextManager[str]]  # starts one relay, yields its base URL


@dataclass(frozen=True)
class FrontLimits:
    function_timeout_s: float = 900.0
    max_environments: int = 4
    max_request_bytes: int = 6 * MB
    full_speed_bytes: int = 6 * MB
    throttled_bytes_per_s: float = 2 * MB


class FunctionUrlFront:
    """ASGI app: the function URL. `start_environment` starts one relay (an execution environment)."""

    def __init__(self, start_environment: StartEnvironment, limits: FrontLimits | None = None) -> None:
        self.limits = limits or FrontLimits()
        self._start_environment = start_environment
        self._idle: list[_Environment] = []
        self._running: set[_Environment] = set()
        self.environments = 0  # alive now: idle or running an invocation
        self._lock = anyio.Lock()
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._invoke(scope, receive, send)

    # --- one invocation ------------------------------------------------------------------------------
    async def _invoke(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await _read_body(receive, self.limits.max_request_bytes)
        except _ClientLeft:
            return  # left before its request was whole: nothing is invoked
        if body is None:
            await _answer(send, 413, "Request must be smaller than 6291456 bytes for the InvokeFunction operation")
            return
        try:
            environment = await self._acquire()
        except Exception as exc:  # any failure to start is the function's error, answered as such
            logger.error("an execution environment failed to start (%s: %s)", type(exc).__name__, exc)
            await _answer(send, 502, FUNCTION_ERROR)
            return
        if environment is None:
            await _answer(send, 429, "Rate Exceeded.")
            return
        out = _Downstream(send, self.limits)
        reachable = True
        try:
            reachable = await self._run(environment.url, scope, body, out)
        finally:
            await self._release(environment, keep=reachable)
        if not out.started:  # failed, or timed out, before the relay answered
            await _answer(send, 502, FUNCTION_ERROR)

    async def _run(self, environment: str, scope: Scope, body: bytes, out: _Downstream) -> bool:
        """The invocation until it ends, whichever way; False if the environment could not be reached at all."""
        try:
            with anyio.move_on_after(self.limits.function_timeout_s):  # the function timeout ends the invocation
                await self._relay(environment, scope, body, out)
        except httpx.ConnectError as exc:
            logger.error("execution environment %s unreachable (%s); replaced on demand", environment, exc)
            return False
        except Exception as exc:  # the relay failed mid-answer: the function's error
            logger.error("invocation failed in %s (%s: %s)", environment, type(exc).__name__, exc)
        return True

    async def _relay(self, environment: str, scope: Scope, body: bytes, out: _Downstream) -> None:
        """Pass the request on with the invocation's context; pass the answer back, throttled; keep reading it to
        its end even when the client has gone (then discard it)."""
        assert self._client is not None
        invocation_id = str(uuid.uuid4())
        url = environment + scope["path"] + (f"?{scope['query_string'].decode()}" if scope.get("query_string") else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        context = {"request_id": invocation_id, "deadline": int((time.time() + self.limits.function_timeout_s) * 1000)}
        headers.append((b"x-amzn-lambda-context", json.dumps(context).encode()))
        request = self._client.build_request(scope["method"], url, headers=headers, content=body)
        response = await self._client.send(request, stream=True)
        try:
            response_headers = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            response_headers.append((b"x-amzn-requestid", invocation_id.encode()))
            await out.send({"type": "http.response.start", "status": response.status_code, "headers": response_headers})
            async for chunk in response.aiter_raw():
                await out.body(chunk)
            await out.send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def _acquire(self) -> _Environment | None:
        """An idle environment, or a new one while under the limit; None: throttled. A start that fails is not
        counted: the next request tries again."""
        async with self._lock:
            if self._idle:
                environment = self._idle.pop()
            elif self.environments >= self.limits.max_environments:
                return None
            else:
                environment = await anyio.to_thread.run_sync(_Environment.start, self._start_environment)
                self.environments += 1
            self._running.add(environment)
            return environment

    async def _release(self, environment: _Environment, *, keep: bool) -> None:
        """Back to the idle ones, or (`keep` False: it could not be reached) stopped and counted off."""
        with anyio.CancelScope(shield=True):  # also when the invocation was cancelled: the slot is never lost
            async with self._lock:
                self._running.discard(environment)
                if keep:
                    self._idle.append(environment)
                    return
                self.environments -= 1
            await anyio.to_thread.run_sync(environment.stop)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._client = _relay_client()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                for environment in [*self._idle, *self._running]:
                    await anyio.to_thread.run_sync(environment.stop)
                await send({"type": "lifespan.shutdown.complete"})
                return


@dataclass(eq=False)
class _Environment:
    """One started relay: its base URL and what stops it."""

    url: str
    _stack: ExitStack

    @classmethod
    def start(cls, start_environment: StartEnvironment) -> _Environment:
        with ExitStack() as stack:
            url = stack.enter_context(start_environment())
            return cls(url, stack.pop_all())

    def stop(self) -> None:
        self._stack.close()


def _relay_client() -> httpx.AsyncClient:
    """The front's connections to its environments: no time limit of their own (the function timeout is), and a
    small receive buffer, so the front passes a slow client's backpressure on instead of hoarding megabytes the
    relay wrote (Linux autotuning would let ~6 MB queue here; what Lambda's front buffers is not known)."""
    transport = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, RELAY_RECEIVE_BUFFER)])
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None))


class _Downstream:
    """The client side of one invocation: throttled past the first 6 MB. A client that left is never told to the
    relay: uvicorn drops writes to a closed connection silently (an OSError is taken the same way)."""

    def __init__(self, send: Send, limits: FrontLimits) -> None:
        self._send = send
        self._limits = limits
        self.sent = 0
        self.started = False  # the response's start went to the client (or would have, had it stayed)
        self.gone = False
        self._throttled_since: float | None = None

    async def body(self, chunk: bytes) -> None:
        if self.gone:
            return
        await self._throttle(len(chunk))
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        self.sent += len(chunk)

    async def _throttle(self, size: int) -> None:
        past = self.sent + size - self._limits.full_speed_bytes
        if past <= 0:
            return
        if self._throttled_since is None:
            self._throttled_since = time.monotonic()
        allowed_at = self._throttled_since + past / self._limits.throttled_bytes_per_s
        await anyio.sleep(max(0.0, allowed_at - time.monotonic()))

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        if self.gone:
            return
        try:
            await self._send(message)
        except OSError:  # the client left: not passed on (uvicorn may also just drop the write silently)
            self.gone = True


class _ClientLeft(Exception):
    pass


async def _read_body(receive: Receive, cap: int) -> bytes | None:
    """The whole request body (Lambda's front buffers it), or None past `cap`."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientLeft
        body += message.get("body", b"")
        if len(body) > cap:
            return None
        if not message.get("more_body", False):
            return bytes(body)


async def _answer(send: Send, status: int, message: str) -> None:
    """An error of the front itself, in Lambda's shape."""
    payload = json.dumps({"Message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})

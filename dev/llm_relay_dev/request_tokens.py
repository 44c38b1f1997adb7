"""Two things the local DynamoDB adds in front of moto (which ignores both), so the ledger's guarantees can be
shown locally:

- `ClientRequestToken` on TransactWriteItems, as DynamoDB honours it: within 10 minutes, the same token with the
  same request is applied once and answered with success again; the same token with a different request is
  refused with `IdempotentParameterMismatchException`.
- injected faults: `POST /_local/faults` with `{"operation": "TransactWriteItems", "contains": "<text>",
  "times": 1}` makes the next matching request (its body contains the text) be applied and then its response
  dropped: the connection is shut without an answer, as when a response is lost on the network. `GET
  /_local/faults` tells how many injected faults have fired.

Runs inside the local DynamoDB's one-request-at-a-time lock, so a token's check and its transaction are atomic.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

TOKEN_WINDOW_S = 600.0
_TARGET = "DynamoDB_20120810."
FAULTS_PATH = "/_local/faults"
_MISMATCH = {
    "__type": "com.amazonaws.dynamodb.v20120810#IdempotentParameterMismatchException",
    "message": "Request token was reused with different parameters",
}

WSGIApp = Callable[..., Iterable[bytes]]


@dataclass
class _Answer:
    fingerprint: str
    at: float
    status: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


@dataclass
class _Fault:
    operation: str
    contains: str
    times: int


class LedgerFront:
    """WSGI middleware: client request tokens and injected faults, in front of moto."""

    def __init__(self, app: WSGIApp) -> None:
        self._app = app
        self._answers: dict[str, _Answer] = {}
        self._faults: list[_Fault] = []
        self._fired = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == FAULTS_PATH:
            return self._control(environ, start_response)
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        operation = target.removeprefix(_TARGET) if target.startswith(_TARGET) else ""
        raw = _read_body(environ)
        fault = self._take_fault(operation, raw)
        if operation == "TransactWriteItems":
            answer = self._transact(environ, start_response, raw)
        else:
            answer = self._app(environ, start_response)
        if fault:
            body = b"".join(answer)
            _drop_connection(environ)
            return [body]
        return answer

    def _transact(self, environ: dict[str, Any], start_response: Callable[..., Any], raw: bytes) -> Iterable[bytes]:
        request = json.loads(raw or b"{}")
        token = request.pop("ClientRequestToken", None)
        if token is None:
            return self._app(environ, start_response)
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        now = time.monotonic()
        self._answers = {t: a for t, a in self._answers.items() if now - a.at < TOKEN_WINDOW_S}
        known = self._answers.get(token)
        if known is not None and known.fingerprint != fingerprint:
            body = json.dumps(_MISMATCH).encode()
            start_response("400 Bad Request", [("Content-Type", "application/x-amz-json-1.0")])
            return [body]
        if known is not None and known.status.startswith("200"):
            start_response(known.status, known.headers)
            return [known.body]
        answer = _Answer(fingerprint, now)
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        body = b"".join(self._app(environ, capture))
        answer.status, answer.headers, answer.body = captured["status"], list(captured["headers"]), body
        if answer.status.startswith("200"):
            self._answers[token] = answer
        return [body]

    def _take_fault(self, operation: str, raw: bytes) -> bool:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.operation == operation and fault.contains.encode() in raw:
                    fault.times -= 1
                    self._fired += 1
                    return True
        return False

    def _control(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            spec = json.loads(_read_body(environ) or b"{}")
            with self._lock:
                fault = _Fault(str(spec["operation"]), str(spec.get("contains", "")), int(spec.get("times", 1)))
                self._faults.append(fault)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"fired": self._fired}).encode()]


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request body, put back for the app behind."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(raw)
    return bytes(raw)


def _drop_connection(environ: dict[str, Any]) -> None:
    """The request was applied; now its answer is lost: shut the connection before anything is written."""
    # waitress hands the app its connection's disconnect check; the connection (a channel) holds the socket.
    channel = getattr(environ.get("waitress.client_disconnected"), "__self__", None)
    sock = getattr(channel, "socket", None)
    if sock is None:
        raise RuntimeError("the local DynamoDB's server does not expose its connection: cannot drop the answer")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def inject_fault(endpoint: str, operation: str, contains: str = "", times: int = 1) -> None:
    """Tests: make the next `times` `operation` requests containing `contains` be applied, their answers lost."""
    spec = {"operation": operation, "contains": contains, "times": times}
    httpx.post(endpoint + FAULTS_PATH, json=spec, timeout=10).raise_for_status()


def faults_fired(endpoint: str) -> int:
    fired: int = httpx.get(endpoint + FAULTS_PATH, timeout=10).json()["fired"]
    return fired

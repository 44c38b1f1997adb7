"""A slow reader at the deadline: it still gets the `deadline` terminal frame, and the record counts what
the upstream sent (read without relaying), directly and through the local function-URL front."""

from __future__ import annotations

import json
import socket
import time

import pytest

from llm_relay_dev.function_url import FrontLimits
from tests.conftest import RelayFactory, Upstream
from tests.integration.function_url_support import LambdaRelayFactory, make_lambda_relay
from tests.integration.helpers import RecordingFinalizer, chat_body, sse_events

__all__ = ["make_lambda_relay"]  # the fixture, imported for pytest

FUNCTION_TIMEOUT_S = 7.0
MARGIN_S = 5.0  # the default margin: the relay ends the stream 2 s in; Lambda would end the invocation at 7 s
TOKENS = 20000  # about 4 MB of SSE, sent by the mock as fast as it can


def _slow_read(url: str, headers: dict[str, str], *, chunk: int = 4096, pause_s: float = 0.02) -> tuple[str, str]:
    """POST a stream and read it slowly (a small receive buffer, 4 KB every 20 ms): its headers and body text."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    body = json.dumps(chat_body(stream=True, mock={"tokens": TOKENS, "chunk_delay_ms": 0, "ttft_ms": 0})).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.connect((host, int(port)))
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{head}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        received = bytearray()
        while part := sock.recv(chunk):
            received += part
            time.sleep(pause_s)  # the reader's own pace, not a wait for an event
    raw_head, _, raw_body = bytes(received).partition(b"\r\n\r\n")
    return raw_head.decode(), _dechunk(raw_body).decode()


def _dechunk(raw: bytes) -> bytes:
    out = bytearray()
    while raw:
        size_line, _, rest = raw.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        raw = rest[size + 2 :]
    return bytes(out)


def _request_id(head: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("x-request-id"))


def _check(upstream: Upstream, recorder: RecordingFinalizer, head: str, text: str) -> None:
    events = sse_events(text)
    # THEN the reader got the deadline frame, after only part of the answer
    assert json.loads(events[-1])["error"]["code"] == "deadline"
    relayed = len(events) - 1
    assert relayed < TOKENS
    # AND the record counts what the upstream sent (within 1 %), or says it is a lower bound
    request_id = _request_id(head)
    outcome = recorder.wait(request_id)
    sent = upstream.state.requests[request_id].chunks_sent
    usage = outcome.usage
    assert outcome.reason.value == "deadline"
    assert usage.lower_bound or abs(usage.completion_tokens - sent) <= 0.01 * sent, (usage, sent, relayed)
    print(f"relayed {relayed} chunks, upstream sent {sent}, recorded {usage.completion_tokens} ({usage.source})")


@pytest.mark.slow
def test_slow_reader_at_the_deadline_directly(make_relay: RelayFactory, upstream: Upstream) -> None:
    # GIVEN a relay whose function times out at 7 s, with the default 5 s margin
    recorder = RecordingFinalizer()
    relay = make_relay(
        app_kwargs={"finalizers": [recorder]}, function_timeout_s=FUNCTION_TIMEOUT_S, deadline_margin_s=MARGIN_S
    )
    # WHEN a slow reader streams a long answer the upstream sends at once
    head, text = _slow_read(relay.url, relay.headers())
    _check(upstream, recorder, head, text)


@pytest.mark.slow
def test_slow_reader_at_the_deadline_through_the_front(
    make_lambda_relay: LambdaRelayFactory, upstream: Upstream
) -> None:
    # GIVEN the relay behind the function-URL front, whose function times out at 7 s; the default 5 s margin
    relay = make_lambda_relay(limits=FrontLimits(function_timeout_s=FUNCTION_TIMEOUT_S), deadline_margin_s=MARGIN_S)
    head, text = _slow_read(relay.url, relay.headers())
    _check(upstream, relay.recorder, head, text)

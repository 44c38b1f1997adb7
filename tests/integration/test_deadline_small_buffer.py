"""A reader with a small receive buffer, reading slowly, still gets the `deadline` terminal frame and the end of the
chunked body: what may queue before them in the relay's connection is bounded (serve.py), so they get in line within
the margin the deadline keeps, however little the reader takes at a time."""

from __future__ import annotations

import json
import socket
import threading
import time

from tests.conftest import RelayFactory
from tests.integration.helpers import chat_body, sse_events

FUNCTION_TIMEOUT_S = 7.0  # with the default 5 s margin, the relay ends the stream 2 s in
RECEIVE_BUFFER = 8 * 1024
READ_BYTES, READ_EVERY_S = 1024, 0.25  # 4 KB/s
READ_FOR_AT_MOST_S = 40.0  # the body is ~40 KB when bounded (10 s of reading); a cut body is read to its end too
TOKENS = 20000  # about 4 MB of SSE, sent by the mock as fast as it can: the reader is always behind


def _read_slowly(url: str, headers: dict[str, str], bodies: list[bytes]) -> None:
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(chat_body(stream=True, mock={"tokens": TOKENS, "chunk_delay_ms": 0, "ttft_ms": 0})).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.settimeout(10)
        sock.connect((host, int(port)))
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{head}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        received = bytearray()
        give_up = time.monotonic() + READ_FOR_AT_MOST_S
        while (part := sock.recv(READ_BYTES)) and time.monotonic() < give_up:
            received += part
            time.sleep(READ_EVERY_S)  # the reader's own pace, not a wait for an event
    bodies.append(bytes(received))


def _dechunk(raw: bytes) -> tuple[bytes, bool]:
    """The body of a chunked response, and whether it ended with the zero-size chunk."""
    out = bytearray()
    while raw:
        size_line, _, rest = raw.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out), rest == b"\r\n"
        out += rest[:size]
        raw = rest[size + 2 :]
    return bytes(out), False


def test_three_slow_readers_with_small_buffers_each_get_the_deadline_frame_and_the_end_of_the_body(
    make_relay: RelayFactory,
) -> None:
    # GIVEN a relay whose function times out at 7 s (the default 5 s margin)
    relay = make_relay(function_timeout_s=FUNCTION_TIMEOUT_S)
    # WHEN three readers with an 8 KB receive buffer, reading 4 KB/s, stream long answers sent at once
    bodies: list[bytes] = []
    readers = [
        threading.Thread(target=_read_slowly, args=(relay.url, relay.headers(), bodies), daemon=True) for _ in range(3)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(READ_FOR_AT_MOST_S + 15)
    # THEN each body ends with the `deadline` terminal frame and then the chunked body's end
    assert len(bodies) == 3
    for raw in bodies:
        head, _, chunked = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        text, ended = _dechunk(chunked)
        events = sse_events(text.decode())
        assert json.loads(events[-1])["error"]["code"] == "deadline", events[-1][:200]
        assert ended, chunked[-200:]

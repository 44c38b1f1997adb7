"""A client that declares a body and abandons it: a 400 `invalid_request` (its mistake, not the relay's), an
INFO line, and no traceback or ERROR in the log."""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

import pytest

from tests.conftest import Relay
from tests.waiting import wait_until


def test_an_abandoned_body_is_a_400_logged_at_info(
    relay: Relay, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    host, port = urlsplit(relay.url).hostname, urlsplit(relay.url).port
    assert host is not None and port is not None
    # GIVEN a request declaring 1000 bytes of body, with a valid key
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {relay.key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=10) as sock:
        # WHEN it sends 20 of them and stops sending
        sock.sendall(head.encode() + b'{"model": "gpt-4o-mi')
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    # THEN the answer, if the connection still carries one, is a 400 invalid_request
    if answer:
        assert answer.startswith(b"HTTP/1.1 400") and b'"invalid_request"' in answer, answer
    # AND the log says so at INFO, with no traceback and nothing at ERROR
    wait_until(lambda: any("before its body was complete" in r.getMessage() for r in caplog.records), "the INFO line")
    line = next(r for r in caplog.records if "before its body was complete" in r.getMessage())
    assert line.levelno == logging.INFO and line.exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text
    # AND it is counted as a rejection (waited for: the relay emits it after the answer, and a metric printed
    # after the test ended would land outside its captured output)
    printed: list[str] = []

    def rejected() -> bool:
        printed.append(capfd.readouterr().out)
        return '"reason":"invalid_request"' in "".join(printed) and '"RequestsRejected"' in "".join(printed)

    wait_until(rejected, "the RequestsRejected metric")

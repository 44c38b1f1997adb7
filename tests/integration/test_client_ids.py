"""Every client id the relay accepts can be cancelled: the ids a cancel call's path cannot carry (`a/b`, `.`, `..`)
are refused at the request, and the spaces HTTP drops from a header value are dropped from the cancel's id too."""

from __future__ import annotations

import json
import socket
import uuid
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.conftest import RelayFactory, Upstream
from tests.integration.helpers import RecordingFinalizer, chat_body
from tests.waiting import wait_until


@pytest.mark.parametrize("client_id", ["a/b", "/", ".", ".."])
def test_an_id_the_cancel_path_cannot_carry_is_refused_at_the_request(
    make_relay: RelayFactory, upstream: Upstream, client_id: str
) -> None:
    # GIVEN a relay
    relay = make_relay()
    seen = len(upstream.state.headers)
    # WHEN a request names itself with an id no cancel call could name (`a%2Fb` is decoded before routing; `.`
    # and `..` are resolved away by URL parsers)
    answer = httpx.post(
        f"{relay.url}/v1/chat/completions",
        json=chat_body(stream=True),
        headers={**relay.headers(), "x-client-request-id": client_id},
        timeout=30,
    )
    # THEN it is refused before anything is admitted or sent upstream, naming the header
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "x-client-request-id"
    assert len(upstream.state.headers) == seen


def _start_with_raw_header(url: str, key: str, header_value: str) -> socket.socket:
    """A streamed request whose X-Client-Request-Id is written byte for byte (httpx refuses to send spaces around
    a header value; curl and hand-written clients do send them)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    body = json.dumps(chat_body(stream=True, mock={"tokens": 2000, "chunk_delay_ms": 10})).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.hostname}\r\nAuthorization: Bearer {key}\r\n"
        f"X-Client-Request-Id:{header_value}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(head.encode() + body)
    return sock


def test_an_id_with_spaces_around_it_is_cancelled_by_the_same_id(make_relay: RelayFactory, upstream: Upstream) -> None:
    # GIVEN a relay streaming a 20 s answer for a request whose header wrote its client id with spaces around it
    recorder = RecordingFinalizer()
    relay = make_relay(app_kwargs={"finalizers": [recorder]})
    client_id = f"  spaced {uuid.uuid4()}  "
    seen = len(upstream.state.headers)
    sock = _start_with_raw_header(relay.url, relay.key, client_id)
    try:
        wait_until(lambda: len(upstream.state.headers) > seen, "the request reached the upstream")
        request_id = upstream.state.headers[seen]["x-request-id"]
        # WHEN the client cancels with the id exactly as it wrote it, spaces included
        answer = httpx.post(
            f"{relay.url}/v1/requests/{quote(client_id, safe='')}/cancel", headers=relay.headers(), timeout=30
        )
        # THEN the cancel names the running request (the id HTTP delivered, without the spaces) and stops it
        assert answer.status_code == 202, answer.text
        assert answer.json() == {"id": client_id.strip(), "object": "relay.cancel", "status": "cancelling"}
        outcome = recorder.wait(request_id)
        assert outcome.reason.value == "client_cancelled" and outcome.cancel_source == "cancel_call"
        assert not upstream.state.requests[request_id].completed
    finally:
        sock.close()

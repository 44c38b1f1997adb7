"""Upstream attempts a model may have answered, through a real relay: a 408, a 504 or a server that closes without
an answer are not retried unless RELAY_RETRY_AMBIGUOUS=true, and every such attempt is on the usage record
(`attempts_maybe_billed`), retried or not."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from llm_relay.dynamo import Stores
from tests.conftest import RelayFactory, Upstream
from tests.integration.helpers import chat_body
from tests.integration.test_limits_relay import new_key, records_of

RETRIES = 2  # the default RELAY_UPSTREAM_MAX_RETRIES


ANSWER: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}},
]


@contextmanager
def closing_upstream(closes: int | None = None) -> Iterator[tuple[str, list[int]]]:
    """An upstream that reads each request whole and closes the connection without a byte of answer, as a server
    that crashed (or a proxy that gave up) after the request reached it; after `closes` such requests (None:
    never) it answers with a short SSE stream. Yields its base URL and a list with the count of requests it took."""
    listener = socket.create_server(("127.0.0.1", 0))
    taken = [0]

    def take(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536) or b"\r\n\r\n"
            head, _, body = data.partition(b"\r\n\r\n")
            sizes = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
            while len(body) < int(sizes[0] if sizes else 0) and (more := conn.recv(65536)):
                body += more
            taken[0] += 1
            if closes is not None and taken[0] > closes:
                events = "".join(
                    f"data: {json.dumps({'id': 'up', 'object': 'chat.completion.chunk', **e})}\n\n" for e in ANSWER
                )
                status = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                conn.sendall((status + events + "data: [DONE]\n\n").encode())

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            take(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", taken
    finally:
        listener.close()
        thread.join(timeout=5)


def attempts_at(upstream: Upstream) -> int:
    """The requests the mock upstream took (every attempt of every request)."""
    return len(upstream.state.bodies)


@pytest.mark.parametrize("status", [408, 504])
@pytest.mark.parametrize("retry_ambiguous", [False, True], ids=["default", "RELAY_RETRY_AMBIGUOUS=true"])
def test_a_408_or_504_is_retried_only_when_configured_and_every_attempt_is_on_the_record(
    make_relay: RelayFactory, stores: Stores, upstream: Upstream, status: int, retry_ambiguous: bool
) -> None:
    # GIVEN an upstream that answers a 408 or a 504 (a model may have timed out generating)
    relay = make_relay(retry_ambiguous=retry_ambiguous)
    plain, key = new_key(stores)
    # WHEN a request comes
    with httpx.Client(timeout=30) as client:
        response = client.post(
            f"{relay.url}/v1/chat/completions", json=chat_body(mock={"status": status}), headers=relay.headers(plain)
        )
    # THEN it fails after one attempt by default, after every retry when configured
    assert response.status_code in (502, 504)
    tried = 1 + RETRIES if retry_ambiguous else 1
    assert attempts_at(upstream) == tried
    # AND the record counts each of those attempts as maybe billed (its cost cannot say what for)
    (record,) = records_of(stores, key.key_id, 1)
    assert record.termination_reason == ("upstream_timeout" if status == 408 else "upstream_error")
    assert record.attempts_maybe_billed == tried


@pytest.mark.parametrize("retry_ambiguous", [False, True], ids=["default", "RELAY_RETRY_AMBIGUOUS=true"])
def test_a_close_without_an_answer_is_retried_only_when_configured_and_on_the_record(
    make_relay: RelayFactory, stores: Stores, retry_ambiguous: bool
) -> None:
    # GIVEN an upstream that takes the whole request and closes without answering
    with closing_upstream() as (url, taken):
        relay = make_relay(upstream_url=url, retry_ambiguous=retry_ambiguous)
        plain, key = new_key(stores)
        # WHEN a request comes
        with httpx.Client(timeout=30) as client:
            response = client.post(f"{relay.url}/v1/chat/completions", json=chat_body(), headers=relay.headers(plain))
        # THEN it fails after one attempt by default, after every retry when configured
        assert response.status_code == 502
        tried = 1 + RETRIES if retry_ambiguous else 1
        assert taken[0] == tried
    # AND the record counts each attempt as maybe billed
    (record,) = records_of(stores, key.key_id, 1)
    assert (record.termination_reason, record.attempts_maybe_billed) == ("upstream_error", tried)


def test_an_answer_after_a_retried_close_records_the_attempt_that_may_have_been_billed(
    make_relay: RelayFactory, stores: Stores
) -> None:
    # GIVEN RELAY_RETRY_AMBIGUOUS=true and an upstream that closes the first request without answering, then answers
    with closing_upstream(closes=1) as (url, taken):
        relay = make_relay(upstream_url=url, retry_ambiguous=True)
        plain, key = new_key(stores)
        # WHEN a request comes
        with httpx.Client(timeout=30) as client:
            response = client.post(
                f"{relay.url}/v1/chat/completions", json=chat_body(stream=True), headers=relay.headers(plain)
            )
        # THEN the retry answered the client
        assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
        assert taken[0] == 2
    # AND the record bills the answer and counts the first attempt as maybe billed too
    (record,) = records_of(stores, key.key_id, 1)
    assert (record.termination_reason, record.completion_tokens, record.attempts_maybe_billed) == ("stop", 1, 1)

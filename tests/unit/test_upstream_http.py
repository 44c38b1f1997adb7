"""The HTTP exchange every upstream kind shares: its pure helpers (backoff, Retry-After parsing, status classes),
and the retry policy of `HttpExchange.open` (with the openai dialect) against `httpx.MockTransport` (no socket)."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, cast

import anyio
import httpx
import pytest

from llm_relay.errors import UpstreamError, UpstreamTimeout
from llm_relay.settings import Settings
from llm_relay.upstreams.http import (
    AMBIGUOUS_STATUS,
    RETRYABLE_STATUS,
    HttpExchange,
    OpenedStream,
    Progress,
    backoff_s,
    parse_retry_after,
    status_class,
)
from llm_relay.upstreams.openai import OpenAIDialect


class FixedRandom(random.Random):
    """`uniform(a, b)` returns the upper bound, so the jitter ceiling can be asserted exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


class ZeroRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


# --- backoff_s -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (30, 8.0)]
)
def test_backoff_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    # GIVEN base 0.5 s and cap 8 s
    # WHEN the jitter draws its maximum
    # THEN the delay is base * 2**attempt, capped
    assert backoff_s(attempt, 0.5, 8.0, None, FixedRandom()) == ceiling


def test_backoff_is_full_jitter_from_zero() -> None:
    assert backoff_s(3, 0.5, 8.0, None, ZeroRandom()) == 0.0


def test_backoff_stays_within_bounds_for_a_seeded_rng() -> None:
    # GIVEN a seeded RNG
    rng = random.Random(7)
    for attempt in range(8):
        ceiling = min(10.0, 0.25 * 2**attempt)
        for _ in range(200):
            # WHEN the backoff is drawn
            delay = backoff_s(attempt, 0.25, 10.0, None, rng)
            # THEN it is within [0, min(cap, base * 2**attempt)]
            assert 0.0 <= delay <= ceiling


def test_backoff_is_deterministic_for_a_given_seed() -> None:
    first = [backoff_s(a, 0.1, 5.0, None, random.Random(42)) for a in range(5)]
    second = [backoff_s(a, 0.1, 5.0, None, random.Random(42)) for a in range(5)]
    assert first == second


def test_retry_after_wins_when_longer() -> None:
    # GIVEN a jittered delay of 0 and a Retry-After of 3 s
    # WHEN the backoff is computed
    # THEN the server's value is used
    assert backoff_s(0, 0.5, 30.0, 3.0, ZeroRandom()) == 3.0


def test_jitter_wins_when_longer_than_retry_after() -> None:
    assert backoff_s(4, 1.0, 30.0, 2.0, FixedRandom()) == 16.0


def test_retry_after_is_capped() -> None:
    assert backoff_s(0, 0.5, 8.0, 120.0, ZeroRandom()) == 8.0
    assert backoff_s(0, 0.5, 8.0, float("inf"), ZeroRandom()) == 8.0


def test_zero_retry_after_does_not_shorten_backoff() -> None:
    assert backoff_s(2, 0.5, 8.0, 0.0, FixedRandom()) == 2.0


# --- parse_retry_after ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), ("0", 0.0), ("1.5", 1.5), (" 7 ", 7.0), ("-3", 0.0), ("120", 120.0)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize("value", [None, "", "soon", "5s", "Tuesday", "Wed, 99 Foo 2015 07:28:00 GMT"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_retry_after_http_date_in_the_future() -> None:
    # GIVEN an HTTP date about 30 s from now (HTTP dates have whole-second precision)
    before = datetime.now(UTC)
    value = format_datetime(before + timedelta(seconds=30), usegmt=True)
    # WHEN parsed
    seconds = parse_retry_after(value)
    after = datetime.now(UTC)
    # THEN it is the seconds from the moment of parsing (between `before` and `after`) until then
    target = parsedate_to_datetime(value)
    assert seconds is not None
    assert (target - after).total_seconds() <= seconds <= (target - before).total_seconds()


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# --- status_class --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "2xx"),
        (204, "2xx"),
        (301, "3xx"),
        (400, "4xx"),
        (429, "4xx"),
        (499, "4xx"),
        (500, "5xx"),
        (503, "5xx"),
        (599, "5xx"),
    ],
)
def test_status_class(status: int, expected: str) -> None:
    assert status_class(status) == expected


def test_retryable_statuses() -> None:
    assert frozenset({429, 500, 502, 503}) == RETRYABLE_STATUS
    assert frozenset({408, 504}) == AMBIGUOUS_STATUS  # a model may have generated: retried only when configured
    assert 409 not in RETRYABLE_STATUS  # a conflict is not transient
    assert 400 not in RETRYABLE_STATUS
    assert 401 not in RETRYABLE_STATUS


# --- HttpExchange.open: the retry policy, against httpx.MockTransport -------------------------------------
# The adapter sleeps for real between attempts (anyio.sleep): the bases stay tiny, and the delay it chose is read
# from its "retrying in" log record rather than from a clock.
SSE_OK = b'data: {"choices":[]}\n\ndata: [DONE]\n\n'
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}


class Scripted:
    """A MockTransport handler answering attempt i with `script[i]`: an httpx exception class (raised), an
    int status, or a (status, headers) pair; 200 once the script runs out. Keeps every request it got."""

    def __init__(self, *script: type[httpx.TransportError] | int | tuple[int, dict[str, str]]) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if self.script else 200
        if isinstance(step, type):
            raise step("scripted failure", request=request)
        status, headers = step if isinstance(step, tuple) else (step, {})
        if status == 200:
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=SSE_OK)
        return httpx.Response(status, headers=headers, json={"error": {"message": f"scripted {status}"}})


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"upstream_retry_base_s": 0.001, "upstream_retry_max_s": 0.05, "upstream_max_retries": 2}
    return Settings(**{**values, **overrides})


async def _key() -> str:
    return "sk-upstream-test"


def _open(handler: Scripted, rng: random.Random | None = None, **overrides: Any) -> OpenedStream:
    """Open one chat stream through a fresh adapter (closed afterwards); raises what the adapter raises."""

    async def run() -> OpenedStream:
        upstream = HttpExchange(_settings(**overrides), httpx.MockTransport(handler), rng or ZeroRandom())
        dialect = OpenAIDialect("http://upstream.test/v1", _key)
        try:
            prepared = await dialect.request(BODY, str(BODY["model"]), "req_test")
            opened = await upstream.open(prepared, dialect, str(BODY["model"]))
            await opened.response.aclose()
            return opened
        finally:
            await upstream.aclose()

    return anyio.run(run)


def _fail(handler: Scripted, rng: random.Random | None = None, **overrides: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        _open(handler, rng, **overrides)
    return caught.value


def _retry_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The delays the adapter chose, from its `retrying in %.3fs` records (the unrounded argument)."""
    records = [r for r in caplog.records if r.name == "llm_relay.upstreams.http" and "retrying in" in r.msg]
    return [float(cast(tuple[Any, ...], r.args)[2]) for r in records]


@pytest.mark.parametrize(
    ("cause", "failure_class"),
    [
        (httpx.ConnectError, "connect"),
        (httpx.ConnectTimeout, "timeout"),
        (httpx.PoolTimeout, "timeout"),
        (429, "4xx"),
        (500, "5xx"),
        (502, "5xx"),
        (503, "5xx"),
    ],
)
def test_transient_failures_before_the_request_was_taken_are_retried(
    cause: type[httpx.TransportError] | int, failure_class: str
) -> None:
    # GIVEN an upstream failing twice in a way that is safe to retry
    handler = Scripted(cause, cause)
    # WHEN the stream is opened with 2 retries allowed
    opened = _open(handler)
    # THEN the third attempt's stream is returned, with the history of the two failures (none of them billed)
    assert opened.response.status_code == 200
    assert (opened.retries, opened.status_errors, opened.maybe_billed) == (2, {failure_class: 2}, 0)
    # AND every attempt sent the same request
    assert len(handler.requests) == 3
    assert len({request.content for request in handler.requests}) == 1
    for request in handler.requests:
        assert request.url == "http://upstream.test/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer sk-upstream-test"
        assert request.headers["x-request-id"] == "req_test"


@pytest.mark.parametrize(
    ("cause", "error_type", "failure_class"),
    [
        (httpx.ReadError, UpstreamError, "connect"),  # (the history files every non-timeout under "connect")
        (httpx.ReadTimeout, UpstreamTimeout, "timeout"),
        (httpx.WriteError, UpstreamError, "connect"),
        (httpx.WriteTimeout, UpstreamTimeout, "timeout"),
    ],
)
def test_never_retried_once_the_request_may_have_reached_the_model(
    cause: type[httpx.TransportError], error_type: type[UpstreamError], failure_class: str
) -> None:
    # GIVEN an upstream whose connection fails after (or while) the request was sent: it may be generating
    handler = Scripted(cause)
    # WHEN the stream is opened with retries allowed
    error = _fail(handler)
    # THEN there was exactly one attempt, and the error says so
    assert len(handler.requests) == 1
    assert type(error) is error_type
    assert (error.retries, error.failures) == (0, {failure_class: 1})


AMBIGUOUS: list[type[httpx.TransportError] | int] = [408, 504, httpx.RemoteProtocolError]


def _open_counting(handler: Scripted, **overrides: Any) -> tuple[OpenedStream | UpstreamError, Progress]:
    """Open through a fresh adapter with a `Progress` the test keeps; the stream, or the failure."""

    async def run() -> tuple[OpenedStream | UpstreamError, Progress]:
        progress = Progress()
        upstream = HttpExchange(_settings(**overrides), httpx.MockTransport(handler), ZeroRandom())
        dialect = OpenAIDialect("http://upstream.test/v1", _key)
        try:
            prepared = await dialect.request(BODY, str(BODY["model"]), "req_test")
            opened = await upstream.open(prepared, dialect, str(BODY["model"]), progress)
            await opened.response.aclose()
            return opened, progress
        except UpstreamError as failure:
            return failure, progress
        finally:
            await upstream.aclose()

    return anyio.run(run)


@pytest.mark.parametrize("cause", AMBIGUOUS)
def test_an_attempt_a_model_may_have_answered_is_not_retried_by_default_and_is_counted(
    cause: type[httpx.TransportError] | int,
) -> None:
    # GIVEN an upstream answering a 408, a 504, or closing without an answer: a model may have generated for it
    handler = Scripted(cause)
    # WHEN the stream is opened with the defaults (2 retries, RELAY_RETRY_AMBIGUOUS off)
    failure, progress = _open_counting(handler)
    # THEN there was one attempt, no second generation paid for, and it is counted as maybe billed
    assert isinstance(failure, UpstreamError) and not failure.fallback_ok
    assert len(handler.requests) == 1
    assert (progress.attempts, progress.maybe_billed) == (1, 1)


@pytest.mark.parametrize("cause", AMBIGUOUS)
def test_with_retry_ambiguous_such_attempts_are_retried_and_each_is_counted(
    cause: type[httpx.TransportError] | int,
) -> None:
    # GIVEN RELAY_RETRY_AMBIGUOUS=true and an upstream failing twice that way, then answering
    handler = Scripted(cause, cause)
    # WHEN the stream is opened
    opened, progress = _open_counting(handler, retry_ambiguous=True)
    # THEN the third attempt answered, and the two before it are on the record as maybe billed
    assert isinstance(opened, OpenedStream) and opened.response.status_code == 200
    assert len(handler.requests) == 3
    assert (opened.retries, opened.maybe_billed, progress.maybe_billed) == (2, 2, 2)


@pytest.mark.parametrize("cause", [httpx.ReadError, httpx.ReadTimeout])
def test_a_read_failure_after_sending_is_counted_as_maybe_billed_and_never_retried(
    cause: type[httpx.TransportError],
) -> None:
    # GIVEN an upstream whose answer fails to arrive after the request was sent, even with RELAY_RETRY_AMBIGUOUS
    handler = Scripted(cause)
    failure, progress = _open_counting(handler, retry_ambiguous=True)
    # THEN one attempt, counted as maybe billed
    assert isinstance(failure, UpstreamError)
    assert len(handler.requests) == 1 and progress.maybe_billed == 1


def test_attempts_no_model_can_have_seen_are_not_counted_as_maybe_billed() -> None:
    failure, progress = _open_counting(Scripted(httpx.ConnectError, 503, 429), upstream_max_retries=2)
    assert isinstance(failure, UpstreamError) and (progress.attempts, progress.maybe_billed) == (3, 0)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    handler = Scripted(status)
    error = _fail(handler)
    assert len(handler.requests) == 1
    assert error.upstream_status == status
    assert (error.retries, error.failures) == (0, {"4xx": 1})


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_attempts_are_bounded_by_upstream_max_retries(max_retries: int) -> None:
    # GIVEN an upstream that never recovers
    handler = Scripted(*[503] * 10)
    # WHEN the stream is opened
    error = _fail(handler, upstream_max_retries=max_retries)
    # THEN it was tried 1 + max_retries times, and the error carries that history
    assert len(handler.requests) == 1 + max_retries
    assert error.upstream_status == 503
    assert (error.retries, error.failures) == (max_retries, {"5xx": 1 + max_retries})


def test_failure_history_counts_each_class() -> None:
    error = _fail(Scripted(httpx.ConnectError, 502, httpx.ConnectTimeout, 503), upstream_max_retries=3)
    assert (error.retries, error.failures) == (3, {"connect": 1, "5xx": 2, "timeout": 1})


def test_backoff_doubles_between_attempts(caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN no Retry-After and jitter drawing its maximum: base, 2 * base, 4 * base
    with caplog.at_level(logging.INFO, logger="llm_relay.upstreams.http"):
        _fail(Scripted(*[503] * 4), FixedRandom(), upstream_max_retries=3, upstream_retry_base_s=0.002)
    assert _retry_delays(caplog) == [0.002, 0.004, 0.008]


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [
        ("0.02", 0.02),  # honoured: longer than the (zero) jitter
        ("3600", 0.05),  # capped at upstream_retry_max_s
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: no wait asked for
        ("soon", 0.0),  # unreadable: ignored
    ],
)
def test_retry_after_is_honoured_and_capped(caplog: pytest.LogCaptureFixture, retry_after: str, delay: float) -> None:
    # GIVEN jitter drawing 0 and a cap of 0.05 s
    with caplog.at_level(logging.INFO, logger="llm_relay.upstreams.http"):
        opened = _open(Scripted((503, {"retry-after": retry_after})))
    assert opened.retries == 1
    assert _retry_delays(caplog) == [delay]


def test_a_rate_limit_that_outlasts_the_retries_passes_its_wait_on() -> None:
    # GIVEN an upstream rate-limiting with Retry-After: 7, and no retries left
    error = _fail(Scripted((429, {"retry-after": "7"})), upstream_max_retries=0)
    # THEN the client gets a 429 naming the upstream's limit, and the upstream's wait
    assert (error.status_code, error.code, error.upstream_status) == (429, "upstream_rate_limited", 429)
    assert error.headers["retry-after"] == "7"
    assert (error.retries, error.failures) == (0, {"4xx": 1})

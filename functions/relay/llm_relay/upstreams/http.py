"""The HTTP exchange every kind of upstream shares: one `httpx.AsyncClient` (keep-alive reused across requests
and upstreams), opening a streamed chat completion with retries (connect errors, 429, 500, 502, 503; `Retry-After`
honoured; exponential backoff with full jitter) only while nothing can have reached a model.

A 408, a 504 or a server that closed without answering may come after a model generated for the request (and its
provider billed it): such an attempt is counted (`attempts_maybe_billed` on the usage record), and retried only with
`RELAY_RETRY_AMBIGUOUS=true`. A read timeout or a reset after the request was sent is counted too, never retried:
the upstream may still be generating.

What differs by kind (the request, the body's decoding) is the `Dialect` (`upstreams.base`). The read timeout of
the client bounds the wait for the response headers; the stream enforces the idle timeout between body reads, so
a 2xx body's reads carry no timeout of their own (`upstreams.body_reads`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import anyio
import httpx

from ..errors import InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout
from ..settings import Settings
from .base import Decoder, Dialect, UpstreamRequest
from .body_reads import untimed_body, use_lean_reads
from .pool import use_fair_pool

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503})
# Retried transport failures: those where the upstream cannot have started generating.
RETRYABLE_TRANSPORT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures after which a model may have generated (and billed): a gateway or model timeout, a close without an
# answer (possibly after the whole request was sent). Retried only with `RELAY_RETRY_AMBIGUOUS`.
AMBIGUOUS_STATUS = frozenset({408, 504})
AMBIGUOUS_TRANSPORT = (httpx.RemoteProtocolError,)
# Transport failures once the request was sent, counted as maybe billed; a read timeout or a reset is never retried
# (the upstream may be generating still).
UNANSWERED_TRANSPORT = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout)
# A fallback to another upstream takes only failures where no model can have seen the request, whatever
# `RELAY_RETRY_AMBIGUOUS` says: another upstream could generate the answer a second time.
FALLBACK_TRANSPORT = RETRYABLE_TRANSPORT
FALLBACK_STATUS = RETRYABLE_STATUS


@dataclass(slots=True)
class Progress:
    """The attempts of one request's open so far, over every upstream tried: readable whatever ends the open (a
    cancel or the deadline stops it between attempts, with no exception of the exchange's own to carry them)."""

    attempts: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # failed attempts by class ("5xx", "connect")
    upstream: str = ""  # the upstream tried last
    maybe_billed: int = 0  # failed attempts that may have reached a model (408, 504, no answer after sending)
    answered: bool = False  # a whole answer's 2xx arrived (embeddings): the provider billed it, whatever follows

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    def failed(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


@dataclass(slots=True)
class OpenedStream:
    """An upstream response with a 2xx status, its body not read yet, and the decoder for that body."""

    response: httpx.Response
    decoder: Decoder
    retries: int = 0  # attempts after the first, over every upstream tried
    status_errors: dict[str, int] = field(default_factory=dict)  # failed attempts by class, over every upstream
    maybe_billed: int = 0  # failed attempts that may have reached a model, over every upstream
    upstream: str = ""  # the name of the upstream that answered (routing)
    billed_as: str = ""  # the model name its answer is priced as (routing; "" : the client's)
    renamed: str = ""  # set when the route sent another model name: the client's, for the chunks it relays


def backoff_s(attempt: int, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Full-jitter exponential backoff; a server's Retry-After (capped) wins when it is longer."""
    delay = rng.uniform(0, min(cap, base * (2**attempt)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class HttpExchange:
    """The pooled client and the retry loop; `open` sends one dialect's request."""

    def __init__(
        self,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._rng = rng or random.Random()
        self._transport = transport
        ambiguous = settings.retry_ambiguous
        self._retry_status = RETRYABLE_STATUS | AMBIGUOUS_STATUS if ambiguous else RETRYABLE_STATUS
        self._retry_transport = RETRYABLE_TRANSPORT + AMBIGUOUS_TRANSPORT if ambiguous else RETRYABLE_TRANSPORT
        self.client = self._new_client()

    def _new_client(self) -> httpx.AsyncClient:
        # The read timeout bounds the wait for the response headers (some providers send them with the first
        # token), so it is the longer of the two; the pump enforces the idle timeout between body reads itself.
        settings = self._settings
        read = max(settings.upstream_idle_timeout_s, settings.upstream_first_token_timeout_s)
        timeout = httpx.Timeout(connect=settings.upstream_connect_timeout_s, read=read, write=10.0, pool=10.0)
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60.0)
        client = httpx.AsyncClient(timeout=timeout, limits=limits, transport=self._transport)
        if self._transport is None:  # httpx's own transport (and the environment's proxies, if any)
            use_fair_pool(client._transport)  # many streams at once: see upstreams.pool
            use_lean_reads(client._transport)  # a body read per chunk: see upstreams.body_reads
        return client

    async def aclose(self) -> None:
        await self.client.aclose()

    async def renew(self) -> None:
        """After a SnapStart restore (`snapstart`): a fresh connection pool and fresh retry jitter. Runs before
        any invocation, so no stream is using the old client."""
        old, self.client = self.client, self._new_client()
        self._rng.seed()
        await old.aclose()

    async def open(
        self, prepared: UpstreamRequest, dialect: Dialect, model: str, progress: Progress | None = None
    ) -> OpenedStream:
        """Send a dialect's prepared request and return the response once its status is 2xx, with the dialect's
        decoder for its body (its chunks name `model`). A failure raises `UpstreamError`, with `fallback_ok` set when
        no attempt can have reached a model. `progress` counts the attempts as they happen."""
        progress = progress if progress is not None else Progress()
        attempt = 0
        maybe_seen = False  # an earlier attempt may have reached a model: no fallback, whatever fails last
        while True:
            request = self.client.build_request(
                "POST", prepared.url, content=prepared.content, headers=prepared.headers
            )
            retry_after: float | None = None
            progress.attempts += 1
            try:
                response = await self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                timed_out = isinstance(exc, httpx.TimeoutException)
                progress.failed("timeout" if timed_out else "connect")
                failure: UpstreamError = (UpstreamTimeout if timed_out else UpstreamError)(
                    f"Upstream {'timed out' if timed_out else 'connection failed'} ({type(exc).__name__})."
                )
                maybe_seen = maybe_seen or not isinstance(exc, FALLBACK_TRANSPORT)
                failure.fallback_ok = not maybe_seen
                progress.maybe_billed += isinstance(exc, UNANSWERED_TRANSPORT)
                if not isinstance(exc, self._retry_transport):
                    raise _with_history(failure, progress) from None
            else:
                if response.is_success:
                    return _opened(response, dialect.decoder(model, int(time.time())), progress)
                progress.failed(status_class(response.status_code))
                progress.maybe_billed += response.status_code in AMBIGUOUS_STATUS
                failure = await _failure_from_response(response)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                if response.status_code == 429 and retry_after is not None:
                    failure.headers["retry-after"] = str(max(1, round(retry_after)))  # the client's own wait
                maybe_seen = maybe_seen or response.status_code not in FALLBACK_STATUS
                failure.fallback_ok = not maybe_seen
                if response.status_code not in self._retry_status:
                    raise _with_history(failure, progress)
            if attempt >= self._settings.upstream_max_retries:
                raise _with_history(failure, progress)
            delay = backoff_s(
                attempt,
                self._settings.upstream_retry_base_s,
                self._settings.upstream_retry_max_s,
                retry_after,
                self._rng,
            )
            logger.info("upstream attempt %d failed (%s); retrying in %.3fs", attempt + 1, failure.code, delay)
            attempt += 1
            await anyio.sleep(delay)


def _opened(response: httpx.Response, decoder: Decoder, progress: Progress) -> OpenedStream:
    """A 2xx response, with the history of the attempts before it."""
    untimed_body(response)  # the stream's watcher bounds the body's reads
    failures = dict(progress.failures)
    return OpenedStream(response, decoder, progress.retries, failures, maybe_billed=progress.maybe_billed)


def _with_history(failure: UpstreamError, progress: Progress) -> UpstreamError:
    """The failure, with every attempt of the open so far (over all the upstreams tried)."""
    failure.retries = progress.retries
    failure.failures = dict(progress.failures)
    return failure


async def _failure_from_response(response: httpx.Response) -> UpstreamError:
    """Translate a non-2xx upstream answer. The upstream's own message is kept for client errors (the
    client can fix them); the relay's credentials problems are not the client's to see."""
    try:
        raw = await response.aread()
    except httpx.HTTPError:
        raw = b""  # the error body itself failed: the status still says what happened
    finally:
        await response.aclose()
    message = _upstream_message(raw)
    status = response.status_code
    if status == 429:
        failure: UpstreamError = UpstreamError(
            f"Upstream rate limited: {message}", upstream_status=status, code="upstream_rate_limited"
        )
        failure.status_code = RateLimited.status_code
        return failure
    if status in (401, 403):
        return UpstreamError("Upstream rejected the relay's credentials.", upstream_status=status)
    if status == 408:  # the upstream (or a proxy before it) gave up waiting: not the client's request at fault
        return UpstreamTimeout(f"Upstream timed out: {message}", upstream_status=status)
    if 400 <= status < 500:
        failure = UpstreamError(
            f"Upstream refused the request: {message}", upstream_status=status, code="upstream_invalid_request"
        )
        failure.status_code = InvalidRequest.status_code if status != 404 else 404
        failure.error_type = "invalid_request_error"
        return failure
    return UpstreamError(f"Upstream error {status}: {message}", upstream_status=status)


def _upstream_message(raw: bytes) -> str:
    """The error message in an upstream's error body: OpenAI's `{"error": {"message"}}`, Ollama's
    `{"error": "..."}`, Bedrock's `{"message": "..."}`; else the start of the body."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        for candidate in (error.get("message") if isinstance(error, dict) else error, body.get("message")):
            if isinstance(candidate, str) and candidate:
                return candidate[:500]
    return raw[:200].decode("utf-8", errors="replace") or "no body"

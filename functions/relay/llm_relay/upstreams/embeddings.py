"""Embeddings over the kinds of upstream that serve them: the `openai` kind's `POST {base}/embeddings` and Ollama's
native `POST {root}/api/embed`. Building the request and reading the answer are pure; `post_embeddings` sends the
request over the shared HTTP exchange, with the retries of a chat stream's open (`HttpExchange.open`), and reads
the whole answer.

Whatever the upstream, the client gets OpenAI's answer, `{"object": "list", "data": [{"object": "embedding",
"index", "embedding"}], "model": <the client's model>, "usage": {"prompt_tokens", "total_tokens"}}`, with its
vectors in the encoding it asked for: Ollama has no `encoding_format`, and an OpenAI-compatible server may ignore
it, so the answer is converted when needed (base64 is the vector's little-endian float32 bytes, as OpenAI sends).
An answer that cannot be trusted to line up with the inputs (another number of vectors, vectors of mixed or of
other dimensions than asked, a value that is not a finite number) is an `UpstreamError`: a client that stores
vectors must never get one in the wrong place.

For Ollama, `input` goes as a list of texts (it takes no token ids: refused, naming `input`), `dimensions` as it
is, and `truncate: false`, so an input longer than the model's context is refused as OpenAI refuses it rather
than embedded cut short without a word. Fields Ollama has no place for (any field OpenAI's API does not define) are
refused naming them: Ollama would ignore them silently. `user` is not sent: it attributes the spend on the relay's
usage record (as for a chat request to Ollama).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import anyio
import anyio.to_thread
import httpx

from ..embeddings_request import EmbeddingsRequest, estimate_input_tokens
from ..errors import InvalidRequest, UpstreamError, UpstreamTimeout
from ..json_text import dumps
from .base import Decoded, UpstreamRequest
from .http import HttpExchange, Progress

__all__ = [
    "EMBEDDING_KINDS",
    "INLINE_READ_BYTES",
    "MAX_ANSWER_BYTES",
    "EmbeddingsResult",
    "check_embeds",
    "embeddings_body",
    "embeddings_http_request",
    "post_embeddings",
    "read_embeddings_answer",
    "read_embeddings_response",
]

EMBEDDING_KINDS: Final = frozenset({"openai", "ollama"})
# The largest answer read: OpenAI's largest (2048 inputs of 3072 floats as JSON) is about 130 MB, far more than a
# relay on Lambda can hold twice, so a bound well below it keeps a runaway upstream from exhausting memory.
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
INLINE_READ_BYTES: Final = 256 * 1024  # about 12 vectors of 1024 floats, some 3 ms to read: in the event loop
ACCEPT: Final = "application/json"
_PATHS: Final = {"openai": "/embeddings", "ollama": "/api/embed"}
_ERROR_CHARS: Final = 500  # an upstream's error message reaches the client: bounded


@dataclass(frozen=True, slots=True)
class EmbeddingsResult:
    """An upstream's embeddings, as the client gets them."""

    body: dict[str, Any] = field(repr=False)  # OpenAI's answer; its usage is the estimate when the upstream gave none
    prompt_tokens: int | None  # the upstream's own count; None: it gave none (bill `estimate_input_tokens`)
    upstream: str = ""  # the name of the upstream that answered (routing)
    billed_as: str = ""  # the model name its answer is priced as ("": the client's)


def check_embeds(kind: str, model: str) -> None:
    """`InvalidRequest` (param `model`) when the kind of upstream serving `model` has no embeddings API."""
    if kind not in EMBEDDING_KINDS:
        raise InvalidRequest(
            f"The upstream serving the model '{model}' (kind {kind}) does not serve embeddings.", param="model"
        )


def embeddings_body(kind: str, request: EmbeddingsRequest, model: str) -> dict[str, Any]:
    """The upstream's request body, sending `model` (the route's name for the client's model); `InvalidRequest`
    names what this kind cannot honour. Pure: callable before admission, to refuse at no cost."""
    check_embeds(kind, request.model)
    return _openai_body(request, model) if kind == "openai" else _ollama_body(request, model)


def embeddings_http_request(
    kind: str, url: str, request: EmbeddingsRequest, model: str, headers: dict[str, str]
) -> UpstreamRequest:
    """The HTTP request for `request` to an upstream of `kind` at `url` (the table's: the base ending in /v1 for
    `openai`, the server root for `ollama`); `headers` as `base.http_headers` builds them, with the key."""
    content = dumps(embeddings_body(kind, request, model)).encode()
    return UpstreamRequest(url.rstrip("/") + _PATHS[kind], headers, content)


def _openai_body(request: EmbeddingsRequest, model: str) -> dict[str, Any]:
    """The client's fields as it sent them (unknown ones too), with the route's model and without `metadata`."""
    body: dict[str, Any] = {"model": model, "input": request.input}
    for name in ("encoding_format", "dimensions", "user"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    return {**body, **request.extra}


def _ollama_body(request: EmbeddingsRequest, model: str) -> dict[str, Any]:
    if request.tokens:
        raise InvalidRequest("The Ollama upstream embeds texts only, not token ids.", param="input")
    refused = [name for name, value in request.extra.items() if value is not None]
    if refused:  # `user` is not among them: it is the relay's spend attribution, kept on the record, not sent
        raise InvalidRequest(f"'{refused[0]}' is not supported by the Ollama upstream.", param=refused[0])
    body: dict[str, Any] = {"model": model, "input": list(request.items), "truncate": False}
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return body


def read_embeddings_response(kind: str, body: bytes, request: EmbeddingsRequest, client_model: str) -> EmbeddingsResult:
    """OpenAI's answer from an upstream's 2xx body, naming `client_model`; `UpstreamError` when the body cannot be
    read or does not answer every input."""
    answer = _load(body)
    vectors, counted = _openai_vectors(answer) if kind == "openai" else _ollama_vectors(answer)
    if len(vectors) != len(request.items):
        raise _unreadable(f"{len(vectors)} vectors for {len(request.items)} inputs")
    data = [
        {"object": "embedding", "index": index, "embedding": embedding}
        for index, embedding in enumerate(_encoded(vectors, request))
    ]
    tokens = counted if counted is not None else estimate_input_tokens(request)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return EmbeddingsResult({"object": "list", "data": data, "model": client_model, "usage": usage}, counted)


async def read_embeddings_answer(
    kind: str,
    body: bytes,
    request: EmbeddingsRequest,
    client_model: str,
    reader: Callable[[str, bytes, EmbeddingsRequest, str], EmbeddingsResult] = read_embeddings_response,
) -> EmbeddingsResult:
    """`read_embeddings_response` (or `reader`), in a worker thread for a body past `INLINE_READ_BYTES`: parsing and
    checking megabytes of floats in the event loop would hold back every stream it relays meanwhile."""
    read = functools.partial(reader, kind, body, request, client_model)
    return read() if len(body) <= INLINE_READ_BYTES else await anyio.to_thread.run_sync(read)


def _unreadable(why: str) -> UpstreamError:
    return UpstreamError(f"Upstream sent an embeddings answer the relay cannot use ({why}).")


def _load(body: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(body, parse_constant=_not_a_number)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _unreadable("not JSON") from None
    if not isinstance(answer, dict):
        raise _unreadable("not a JSON object")
    if answer.get("error") is not None:
        error = answer["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise UpstreamError(f"Upstream error: {str(message)[:_ERROR_CHARS]}")
    return answer


def _not_a_number(constant: str) -> Any:
    raise ValueError(f"{constant} is not a number a client can read")


def _count(value: Any) -> int | None:
    """A token count; 0 is none (a non-empty input has at least one token: a server that says 0 did not count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


Vector = list[float] | str  # floats, or OpenAI's base64


def _openai_vectors(answer: dict[str, Any]) -> tuple[list[Vector], int | None]:
    """The vectors in `index` order (a server that gives no index: in their order)."""
    data = answer.get("data")
    if not isinstance(data, list):
        raise _unreadable("no data")
    by_index: dict[int, Vector] = {}
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or index in by_index:
            raise _unreadable(f"data.{position} has no index of its own")
        by_index[index] = item.get("embedding")
    if sorted(by_index) != list(range(len(by_index))):
        raise _unreadable("the indexes of data are not 0 to n-1")
    usage = answer.get("usage")
    counted = _count(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
    return [by_index[index] for index in range(len(by_index))], counted


def _ollama_vectors(answer: dict[str, Any]) -> tuple[list[Vector], int | None]:
    embeddings = answer.get("embeddings")
    if not isinstance(embeddings, list):
        raise _unreadable("no embeddings")
    return embeddings, _count(answer.get("prompt_eval_count"))


def _encoded(vectors: list[Vector], request: EmbeddingsRequest) -> list[Vector]:
    """Every vector checked (finite numbers, one dimension for all, the one asked for) and in the encoding the
    client asked for."""
    out: list[Vector] = []
    dimensions = request.dimensions
    for index, vector in enumerate(vectors):
        floats = _floats(vector)
        if floats is None:
            raise _unreadable(f"vector {index} is not a list of numbers")
        dimensions = dimensions or len(floats)
        if len(floats) != dimensions:
            asked = " (it may not support 'dimensions')" if request.dimensions else ""
            raise _unreadable(f"vector {index} has {len(floats)} dimensions, not {dimensions}{asked}")
        if not request.base64:
            out.append(floats)
        elif isinstance(vector, str):
            out.append(vector)
        else:
            out.append(_to_base64(floats, index))
    return out


def _floats(vector: Any) -> list[float] | None:
    """A vector's numbers (decoded from base64), or None when it is no vector."""
    if isinstance(vector, str):
        return _from_base64(vector)
    if not isinstance(vector, list) or not vector:
        return None
    for value in vector:
        if (type(value) is not float and type(value) is not int) or not math.isfinite(value):
            return None
    return cast(list[float], vector)


def _from_base64(text: str) -> list[float] | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw or len(raw) % 4:
        return None
    floats = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return floats if all(map(math.isfinite, floats)) else None


def _to_base64(floats: list[float], index: int) -> str:
    try:
        raw = struct.pack(f"<{len(floats)}f", *floats)
    except OverflowError:
        raise _unreadable(f"vector {index} holds a number beyond float32") from None
    return base64.b64encode(raw).decode("ascii")


class _WholeBody:
    """What `HttpExchange.open` asks of a dialect besides the request it is given: a decoder for the body. An
    embeddings answer is one JSON document read whole (`post_embeddings`), so that decoder is never fed."""

    kind = "embeddings"

    async def request(self, body: dict[str, Any], model: str, request_id: str) -> UpstreamRequest:
        raise NotImplementedError("embeddings requests are built by embeddings_http_request")

    def decoder(self, model: str, created: int) -> _Unfed:
        return _Unfed()


class _Unfed:
    def feed(self, raw: bytes) -> list[Decoded]:
        return []

    def close(self) -> list[Decoded]:
        return []


async def post_embeddings(
    exchange: HttpExchange,
    prepared: UpstreamRequest,
    *,
    idle_timeout_s: float,
    progress: Progress | None = None,
    max_bytes: int = MAX_ANSWER_BYTES,
) -> bytes:
    """Send `prepared` and return its 2xx body whole. The open is the chat stream's (`HttpExchange.open`): the same
    retries, backoff, `Retry-After`, translation of 4xx/5xx into `UpstreamError`, and the attempts counted in
    `progress`. The body's reads wait at most `idle_timeout_s` each (the exchange leaves a 2xx body's reads
    untimed); a body past `max_bytes`, a stall or a broken connection is an `UpstreamError` counted in
    `progress.maybe_billed` (the model did answer). Cancel-safe: the response is closed whatever ends the call,
    a cancel included; the caller bounds the whole call (its deadline) with its own cancel scope."""
    progress = progress if progress is not None else Progress()
    opened = await exchange.open(prepared, _WholeBody(), "", progress)
    progress.answered = True  # the provider bills an answer it started, read to its end or not
    try:
        return await _read_whole(opened.response, idle_timeout_s, max_bytes)
    except UpstreamError as failure:
        progress.maybe_billed += 1
        failure.retries, failure.failures = progress.retries, dict(progress.failures)
        raise
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(httpx.HTTPError, OSError):
            await opened.response.aclose()


async def _read_whole(response: httpx.Response, idle_timeout_s: float, max_bytes: int) -> bytes:
    body = bytearray()
    pieces = response.aiter_bytes()  # decoded: a server may compress even when asked not to
    try:
        while True:
            with anyio.fail_after(idle_timeout_s):
                piece = await anext(pieces, None)
            if piece is None:
                return bytes(body)
            body += piece
            if len(body) > max_bytes:
                raise UpstreamError(f"Upstream sent an embeddings answer larger than {max_bytes} bytes.")
    except TimeoutError:
        raise UpstreamTimeout(f"Upstream stopped sending its answer (nothing for {idle_timeout_s:g}s).") from None
    except httpx.HTTPError as exc:
        raise UpstreamError(f"Upstream connection failed while sending its answer ({type(exc).__name__}).") from None

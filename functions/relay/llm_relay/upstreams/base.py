"""What every kind of upstream provides, and the small pieces the kinds share (chunk builders, request headers).

The relay speaks OpenAI chat-completion chunks inside (metering, budgets, framing for SSE and NDJSON clients, the
`stream: false` aggregate). Each kind of upstream (`openai` SSE, `ollama` and generic `ndjson` lines, `bedrock`
ConverseStream event-stream messages) is a `Dialect`: it turns the validated chat request into one HTTP request,
and its `Decoder` turns the raw response body, fed in whatever pieces the network delivers, into those chunks.
The HTTP exchange itself (the pooled httpx client, retries before the first byte, timeouts, closing on cancel) is
the same for every kind (`upstreams.http`).

A decoder yields, in order:
- OpenAI `chat.completion.chunk` dicts: `choices[0].delta` (`role`, `content`, `tool_calls`), a chunk whose
  choice carries `finish_reason` (`stop`, `length`, `tool_calls`, `content_filter`), and a usage chunk
  (`choices: []`, `usage: {prompt_tokens, completion_tokens, total_tokens}`) from the upstream's own counts.
  A translated chunk's `id` may be empty: the relay puts its request id in every chunk it relays.
- `END` when the upstream's own end marker came (`[DONE]`, Ollama's `done: true` line, Bedrock's `metadata`).
- `Failed(message)` when the upstream reported an error in the stream or sent something that cannot be read;
  the relay ends the stream as `upstream_error` with that message (it reaches the client: no secrets in it).
A body that ends without the end marker is simply over: the relay ends the stream with the reason of the last
finish_reason seen, `incomplete` when there was none. So a decoder emits the finish chunk only together with
what completes the stream (Ollama's final line; Bedrock's `metadata` after `messageStop`), never earlier.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

__all__ = [
    "END",
    "Decoded",
    "Decoder",
    "Dialect",
    "Ended",
    "Failed",
    "KeyProvider",
    "UpstreamRequest",
    "chunk",
    "http_headers",
    "usage_chunk",
]

KeyProvider = Callable[[], Awaitable[str | None]]
"""The upstream's API key, fetched when a request is built (None: send no Authorization header)."""


@dataclass(frozen=True, slots=True)
class Ended:
    """The upstream's own end-of-stream marker."""


END: Final = Ended()


@dataclass(frozen=True, slots=True)
class Failed:
    """An in-stream error or an unreadable event: the stream ends as `upstream_error` with `message`."""

    message: str


Decoded = dict[str, Any] | Ended | Failed


def chunk(model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """A translated `chat.completion.chunk` of one choice (its `id` is left to the relay)."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "", "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}


def usage_chunk(model: str, created: int, prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """A translated usage chunk (`choices: []`) of an upstream's own counts; `cached`: prompt tokens read from a
    cache, within `prompt`."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {
        "id": "",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


async def http_headers(key: KeyProvider | None, request_id: str, accept: str) -> dict[str, str]:
    """The headers of an HTTP kind's request: JSON in, the relay's request id, the key as a Bearer token when there
    is one, and `accept-encoding: identity`: the relay reads raw bytes as they come, and a compressed stream would
    hold tokens back in the decompressor."""
    headers = {
        "content-type": "application/json",
        "accept": accept,
        "accept-encoding": "identity",
        "x-request-id": request_id,
    }
    api_key = await key() if key is not None else None
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


class Decoder(Protocol):
    """Stateful, pure: raw body bytes in (any split), decoded items out."""

    def feed(self, raw: bytes) -> list[Decoded]: ...

    def close(self) -> list[Decoded]:
        """The body ended: what a trailing unterminated line still holds (nothing to say otherwise)."""
        ...


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One HTTP request to an upstream, ready to send (and to send again on a retry: it is never consumed)."""

    url: str  # absolute
    # Sent as they are: the HTTP kinds include `x-request-id` and `accept-encoding: identity`. Never in a repr: they
    # hold the upstream's credentials (a Bearer key, a SigV4 signature and session token).
    headers: dict[str, str] = field(repr=False)
    content: bytes = field(repr=False)


class Dialect(Protocol):
    """One kind of upstream."""

    kind: str

    async def request(self, body: dict[str, Any], model: str, request_id: str) -> UpstreamRequest:
        """The HTTP request for a chat completion. `body` is the client's validated request as the relay forwards
        it (`ChatRequest.upstream_body()`: always `stream: true`, OpenAI field names, unknown fields kept);
        `model` is the name to send (the route's `rewrite`, or the client's model). A field this kind of
        upstream cannot honour raises `errors.InvalidRequest` naming it (`param=`), never a silent drop."""
        ...

    def decoder(self, model: str, created: int) -> Decoder:
        """A decoder for one response body; `model` and `created` fill the chunks it translates."""
        ...

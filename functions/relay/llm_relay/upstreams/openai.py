"""The `openai` kind: an OpenAI-compatible chat-completions endpoint streaming Server-Sent Events.

The body goes as the client sent it (validated; unknown fields kept, since providers have their own parameters),
with the route's model name; each SSE `data:` event is one chunk, `[DONE]` the end marker.
"""

from __future__ import annotations

import json
from typing import Any

from ..sse import SSELineTooLong, SSEParser
from .base import END, Decoded, Failed, KeyProvider, UpstreamRequest, http_headers
from .sequence import EventSequence

MALFORMED = "Upstream sent a malformed event."


class OpenAIDialect:
    kind = "openai"

    def __init__(self, base_url: str, key: KeyProvider | None = None) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._key = key

    async def request(self, body: dict[str, Any], model: str, request_id: str) -> UpstreamRequest:
        headers = await http_headers(self._key, request_id, "text/event-stream")
        payload = body if body.get("model") == model else {**body, "model": model}
        return UpstreamRequest(self._url, headers, json.dumps(payload, separators=(",", ":")).encode())

    def decoder(self, model: str, created: int) -> OpenAIDecoder:
        return OpenAIDecoder()


class OpenAIDecoder:
    """SSE events → chunks. The chunks pass on as the upstream sent them (the relay only splices its id in)."""

    __slots__ = ("_done", "_parser", "_sequence")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._done = False
        self._sequence = EventSequence()  # events with an `id:` line: a resent one is dropped

    @property
    def repeats(self) -> int:
        """Events dropped because the upstream sent them again (an SSE id that repeats or goes back)."""
        return self._sequence.repeats

    def feed(self, raw: bytes) -> list[Decoded]:
        if self._done:
            return []
        try:
            events = self._parser.feed(raw)
        except SSELineTooLong:
            return self._stop(Failed("Upstream sent a malformed event (line too long)."))
        out: list[Decoded] = []
        for event in events:
            if not self._sequence.admit(event.id if event.id_given else None):
                continue
            item = _decode(event.data)
            out.append(item)
            if not isinstance(item, dict):
                self._done = True
                break
        return out

    def close(self) -> list[Decoded]:
        self._parser.flush()  # an event without its blank line is not dispatched (the SSE rules)
        return []

    def _stop(self, item: Decoded) -> list[Decoded]:
        self._done = True
        return [item]


def _decode(data: str) -> Decoded:
    if data == "[DONE]":
        return END
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes, under the line cap
        return Failed(MALFORMED)
    if not isinstance(chunk, dict):
        return Failed(MALFORMED)
    if "error" in chunk and not chunk.get("choices"):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else None
        return Failed(f"Upstream error: {message or 'unknown'}")
    return chunk

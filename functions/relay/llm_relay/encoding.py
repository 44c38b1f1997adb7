"""Client framings (pure): OpenAI SSE and NDJSON. Both take the same chunk objects."""

from __future__ import annotations

import json
from typing import Any, Protocol


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class Framing(Protocol):
    media_type: str
    heartbeat: bytes
    nudge: bytes

    def chunk(self, chunk: dict[str, Any]) -> bytes: ...
    def end(self, summary: dict[str, Any]) -> bytes: ...
    def error(self, error: dict[str, Any]) -> bytes: ...


class SSEFraming:
    """`data: {chunk}\\n\\n` … `data: [DONE]\\n\\n`, exactly as OpenAI frames it."""

    media_type = "text/event-stream"
    heartbeat = b": ping\n\n"
    nudge = b"\n"

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return f"data: {dumps(chunk)}\n\n".encode()

    def end(self, summary: dict[str, Any]) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, error: dict[str, Any]) -> bytes:
        return f"data: {dumps(error)}\n\n".encode()


class NDJSONFraming:
    """One chunk object per line, then one `relay.summary` line (or an `{"error": …}` line)."""

    media_type = "application/x-ndjson"
    heartbeat = b"\n"
    nudge = b"\n"

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return f"{dumps(chunk)}\n".encode()

    def end(self, summary: dict[str, Any]) -> bytes:
        return f"{dumps(summary)}\n".encode()

    def error(self, error: dict[str, Any]) -> bytes:
        return f"{dumps(error)}\n".encode()

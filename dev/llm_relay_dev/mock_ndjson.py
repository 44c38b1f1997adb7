"""The mock upstream's NDJSON shapes: Ollama's native `/api/chat` lines, and this project's own NDJSON endpoint
output (chunk lines, then a `relay.summary` line). `mock_upstream` streams every shape (its OpenAI SSE one too)
with the same words, faults and records; a `Shape` only says how each piece of the answer is written on the wire.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["OllamaShape", "RelayNDJSONShape", "Shape", "ShapeFactory"]


class Shape(Protocol):
    """How one mode writes each piece of an answer on the wire (one instance per response)."""

    media_type: str

    def start(self) -> list[bytes]: ...
    def token(self, text: str) -> bytes: ...
    def malformed(self) -> bytes: ...
    def error(self) -> bytes: ...
    def end(self, finish: str, usage: dict[str, int]) -> list[bytes]: ...
    def error_body(self, message: str, kind: str) -> dict[str, Any]: ...


ShapeFactory = Callable[[str, int, str], Shape]  # (model, created, request id)


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class OllamaShape:
    """`POST /api/chat`: `{"message": {...}, "done": false}` per token, then the `done: true` line with
    `done_reason` and the counts (`prompt_eval_count`, `eval_count`). Errors are `{"error": "<text>"}`."""

    media_type = "application/x-ndjson"

    def __init__(self, model: str, created: int, request_id: str) -> None:
        self.model = model
        self.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))

    def _message(self, content: str, **extra: Any) -> bytes:
        message = {"role": "assistant", "content": content}
        return _line({"model": self.model, "created_at": self.created_at, "message": message, **extra})

    def start(self) -> list[bytes]:
        return []

    def token(self, text: str) -> bytes:
        return self._message(text, done=False)

    def malformed(self) -> bytes:
        return b'{"model": "broken", "message": {\n'

    def error(self) -> bytes:
        return _line({"error": "mock upstream failure"})

    def end(self, finish: str, usage: dict[str, int]) -> list[bytes]:
        counts = {"prompt_eval_count": usage["prompt_tokens"], "eval_count": usage["completion_tokens"]}
        return [self._message("", done=True, done_reason=finish, total_duration=0, **counts)]

    def error_body(self, message: str, kind: str) -> dict[str, Any]:
        return {"error": message}


class RelayNDJSONShape:
    """`POST /ndjson/chat`: what this project's `/api/v1/chat/stream` sends: one chat.completion.chunk per line,
    then a `relay.summary` line, or an `{"error": {...}}` line."""

    media_type = "application/x-ndjson"

    def __init__(self, model: str, created: int, request_id: str) -> None:
        self.model = model
        self.created = created
        self.request_id = request_id

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def start(self) -> list[bytes]:
        return [_line(self._chunk({"role": "assistant", "content": ""}, None))]

    def token(self, text: str) -> bytes:
        return _line(self._chunk({"content": text}, None))

    def malformed(self) -> bytes:
        return b'{"id": "broken", "choices": [\n'

    def error(self) -> bytes:
        error = {"message": "mock upstream failure", "type": "upstream_error", "param": None}
        return _line({"error": {**error, "code": "upstream_error", "request_id": self.request_id}})

    def end(self, finish: str, usage: dict[str, int]) -> list[bytes]:
        usage_chunk = {**self._chunk({}, None), "choices": [], "usage": usage}
        summary = {
            "object": "relay.summary",
            "id": self.request_id,
            "model": self.model,
            "finish_reason": finish,
            "termination_reason": finish,
            "usage": {**usage, "estimated": False},
        }
        return [_line(self._chunk({}, finish)), _line(usage_chunk), _line(summary)]

    def error_body(self, message: str, kind: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind}}

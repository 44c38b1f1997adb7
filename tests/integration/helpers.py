"""Helpers for integration tests: a recording finalizer and stream readers."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from llm_relay.outcome import RequestContext, StreamOutcome


class RecordingFinalizer:
    """Keeps every (context, outcome) the relay finalized, for assertions."""

    def __init__(self) -> None:
        self.done: dict[str, StreamOutcome] = {}
        self.contexts: dict[str, RequestContext] = {}
        self._lock = threading.Lock()

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        with self._lock:
            self.done[ctx.request_id] = outcome
            self.contexts[ctx.request_id] = ctx

    def wait(self, request_id: str, timeout: float = 5.0) -> StreamOutcome:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if request_id in self.done:
                    return self.done[request_id]
            time.sleep(0.005)
        raise AssertionError(f"request {request_id} was not finalized within {timeout}s")


def chat_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}
    body.update(extra)
    return body


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order (comments skipped)."""
    return [block[len("data: ") :] for block in text.split("\n\n") if block.startswith("data: ")]


def ndjson_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]

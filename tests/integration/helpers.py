"""Helpers for integration tests: a recording finalizer and stream readers."""

from __future__ import annotations

import json
import threading
from typing import Any

from llm_relay.outcome import RequestContext, StreamOutcome
from tests.waiting import PATIENCE_S, wait_until


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

    def wait(self, request_id: str, timeout: float = PATIENCE_S) -> StreamOutcome:
        """The request's outcome, once it was finalized."""

        def finalized() -> StreamOutcome | None:
            with self._lock:
                return self.done.get(request_id)

        return wait_until(finalized, f"request {request_id} finalized", timeout)


def chat_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}
    body.update(extra)
    return body


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order (comments skipped)."""
    return [block[len("data: ") :] for block in text.split("\n\n") if block.startswith("data: ")]


def ndjson_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]

"""OpenAI chat completions: the relay's own form, so parsing is validation and rendering is framing (pure)."""

from __future__ import annotations

from typing import Any

from ..chat_request import ChatRequest, parse_chat_request
from ..encoding import NDJSONFraming, SSEFraming

__all__ = ["ChatApi"]


class ChatApi:
    """`/v1/chat/completions` (SSE), or its NDJSON twin (`ndjson=True`: `/api/v1/chat/stream`)."""

    name = "chat"

    def __init__(self, *, ndjson: bool = False) -> None:
        self.ndjson = ndjson

    def parse(self, raw: bytes, *, max_tokens_cap: int, allowed_models: frozenset[str] | None) -> ChatRequest:
        return parse_chat_request(raw, max_tokens_cap=max_tokens_cap, allowed_models=allowed_models)

    def framing(self, request_id: str, model: str, created: int) -> SSEFraming | NDJSONFraming:
        return NDJSONFraming() if self.ndjson else SSEFraming()

    def answer(self, completion: dict[str, Any]) -> dict[str, Any]:
        return completion

    def error(self, body: dict[str, Any], status: int) -> dict[str, Any]:
        return body

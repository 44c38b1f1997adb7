"""Anthropic's Messages API (`POST /v1/messages`) over the relay's chat pipeline (pure): requests translated into
chat requests (`messages_request`), answers rendered from chat chunks (`messages_events`)."""

from __future__ import annotations

from typing import Any

from ..chat_request import ChatRequest, load_object, validate_chat_request
from .messages_events import MessagesFraming, message_id, messages_answer, messages_error
from .messages_request import to_chat_payload

__all__ = ["MessagesApi"]


class MessagesApi:
    """`/v1/messages`: Anthropic's request and answer shapes, its SSE events and its error bodies."""

    name = "messages"

    def parse(self, raw: bytes, *, max_tokens_cap: int, allowed_models: frozenset[str] | None) -> ChatRequest:
        payload = to_chat_payload(load_object(raw), max_tokens_cap=max_tokens_cap)
        return validate_chat_request(payload, max_tokens_cap=max_tokens_cap, allowed_models=allowed_models)

    def framing(self, request_id: str, model: str, created: int) -> MessagesFraming:
        return MessagesFraming(message_id(request_id), model, created)

    def answer(self, completion: dict[str, Any]) -> dict[str, Any]:
        return messages_answer(completion)

    def error(self, body: dict[str, Any], status: int) -> dict[str, Any]:
        return messages_error(body, status)

"""OpenAI's Responses API (`POST /v1/responses`) over the relay's chat pipeline (pure): requests translated into
chat requests (`responses_request`), answers rendered from chat chunks (`responses_events`)."""

from __future__ import annotations

from typing import Any

from ..chat_request import ChatRequest, load_object, validate_chat_request
from ..errors import InvalidRequest
from ..validation import SCHEMA_PARAM
from .responses_events import ResponsesFraming, responses_answer, responses_error
from .responses_request import to_chat_payload

__all__ = ["ResponsesApi"]


class ResponsesApi:
    """`/v1/responses`: stateless (no stored responses), function tools only, streamed as the API's SSE events."""

    name = "responses"

    def parse(self, raw: bytes, *, max_tokens_cap: int, allowed_models: frozenset[str] | None) -> ChatRequest:
        payload = load_object(raw)
        chat = to_chat_payload(payload, max_tokens_cap=max_tokens_cap)
        try:
            request = validate_chat_request(chat, max_tokens_cap=max_tokens_cap, allowed_models=allowed_models)
        except InvalidRequest as exc:
            if exc.param == SCHEMA_PARAM:  # a schema the relay cannot validate by, named as the client wrote it
                detail = exc.message.split(": ", 1)[-1]
                param = "text.format.schema"
                raise InvalidRequest(f"Invalid value for '{param}': {detail}", param=param) from None
            if not (exc.param or "").startswith("messages"):
                raise
            # The translation checked every item, so what is left is the conversation as a whole (its length):
            # named as the client wrote it, not as the relay's chat request.
            detail = exc.message.split(": ", 1)[-1]
            raise InvalidRequest(f"Invalid value for 'input': {detail}", param="input") from None
        return request.with_native(payload)  # validated: an `openai` upstream may be sent it as it is

    def framing(self, request_id: str, model: str, created: int) -> ResponsesFraming:
        return ResponsesFraming(request_id, model, created)

    def answer(self, completion: dict[str, Any]) -> dict[str, Any]:
        return responses_answer(completion)

    def error(self, body: dict[str, Any], status: int) -> dict[str, Any]:
        return responses_error(body, status)

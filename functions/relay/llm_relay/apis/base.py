"""What each API the relay speaks provides (`Api`), and the request-parsing steps they share (pure)."""

from __future__ import annotations

from typing import Any, Protocol

from ..chat_request import ChatRequest, load_object, validate_chat_request
from ..encoding import Framing

__all__ = ["Api", "load_object", "validate_chat_request"]


class Api(Protocol):
    """One API: its requests translated into the relay's chat request, its answers rendered from chat chunks."""

    name: str  # "chat", "responses", "messages": the usage record's `api`

    def parse(self, raw: bytes, *, max_tokens_cap: int, allowed_models: frozenset[str] | None) -> ChatRequest:
        """The request body as the relay's validated chat request. What the API's request asks that the relay cannot
        honour is an `InvalidRequest` naming the field as the client wrote it (`param=`), never a silent drop; a
        model outside `allowed_models` is `ModelNotAllowed`; an output limit over `max_tokens_cap` is refused."""
        ...

    def framing(self, request_id: str, model: str, created: int) -> Framing:
        """The renderer of one streamed answer (stateful: one per stream). It is given the chat chunks the relay
        sends the client (`id` already the request id, usage stripped), then exactly one of `end(summary)` (the
        `relay.summary` object: `finish_reason`, `termination_reason`, `usage` in OpenAI's names) or
        `error(body)` (the relay's OpenAI-shaped error body)."""
        ...

    def answer(self, completion: dict[str, Any]) -> dict[str, Any]:
        """The `stream: false` body, from the assembled `chat.completion` (its `usage` in OpenAI's names)."""
        ...

    def error(self, body: dict[str, Any], status: int) -> dict[str, Any]:
        """An error answered with HTTP `status`, in this API's shape, from the relay's OpenAI-shaped body."""
        ...

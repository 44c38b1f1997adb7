"""The prompt side of the compliance gate (pure): the messages are checked before the request leaves the relay.

Every text the client sends is checked: string contents, the text parts of a content list, and the arguments of the
tool calls in earlier assistant turns. `redact` replaces the values in place; `block` refuses the request (400
`pii_in_prompt`), naming the entity types found and never the values.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..chat_request import ChatMessage, ChatRequest
from ..errors import PromptRefused
from .policy import Side
from .scanner import Detector, redact


def sanitize_prompt(
    chat: ChatRequest, side: Side, detector: Detector, placeholder: str
) -> tuple[ChatRequest, Counter[str]]:
    """The request with its prompt redacted, and the values found by entity type; `PromptRefused` in block mode."""
    found: Counter[str] = Counter()

    def clean(text: str) -> str:
        piece = redact(detector, text, lambda entity: placeholder.format(entity=entity))
        found.update(piece.entities)
        return piece.text

    messages = [_message(message, clean) for message in chat.messages]
    if found and side.mode == "block":
        types = ", ".join(sorted(found))
        raise PromptRefused(
            f"The prompt contains values of blocked types ({types}); the request was not sent.", param="messages"
        )
    if not found:
        return chat, found
    return chat.model_copy(update={"messages": messages}), found


def prompt_texts(chat: ChatRequest) -> list[str]:
    """Every text of the prompt, in the order `with_prompt_texts` puts them back (for the guardrail)."""
    texts: list[str] = []

    def collect(text: str) -> str:
        texts.append(text)
        return text

    for message in chat.messages:
        _message(message, collect)
    return texts


def with_prompt_texts(chat: ChatRequest, texts: list[str]) -> ChatRequest:
    """The request with the texts of its prompt replaced, in `prompt_texts` order."""
    replacements = iter(texts)
    messages = [_message(message, lambda _: next(replacements)) for message in chat.messages]
    return chat.model_copy(update={"messages": messages})


def _message(message: ChatMessage, clean: Any) -> ChatMessage:
    update: dict[str, Any] = {}
    content = message.content
    if isinstance(content, str):
        update["content"] = clean(content)
    elif isinstance(content, list):
        update["content"] = [_part(part, clean) for part in content]
    calls = (message.model_extra or {}).get("tool_calls")
    if isinstance(calls, list):
        update["tool_calls"] = [_call(call, clean) for call in calls]
    return message.model_copy(update=update) if update else message


def _part(part: dict[str, Any], clean: Any) -> dict[str, Any]:
    text = part.get("text")
    return {**part, "text": clean(text)} if isinstance(text, str) else part


def _call(call: Any, clean: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    return {**call, "function": {**function, "arguments": clean(function["arguments"])}}

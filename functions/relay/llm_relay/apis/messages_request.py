"""An Anthropic Messages request → the relay's chat request (pure).

Everything the relay does works on OpenAI chat requests, so a Messages request is translated before anything is
admitted. What a chat upstream cannot honour is refused with a 400 naming the field as the client wrote it
(`messages.0.content.1.type`), never dropped: a client that asked for `top_k` or a web search must not get an
answer that silently ignored it. The chat request's own validation runs afterwards (`validate_chat_request`); the
checks here are the ones whose message must name the Messages field (indices into the client's `messages`, not
into the translated list, which has more entries once tool results become `tool` messages).

Dropped on purpose, because dropping them changes no answer: `cache_control` (a prompt-caching hint, anywhere it
may appear), `thinking: {"type": "disabled"}`, `service_tier` "auto"/"standard_only" (the relay has one tier, which
satisfies both), `tool_choice` auto/none without tools, and `thinking`/`redacted_thinking` blocks in history.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidRequest

__all__ = ["MAX_STOP_SEQUENCES", "to_chat_payload"]

# OpenAI's chat API takes at most 4 stop sequences and refuses more; refused here so the message names the field
# the client wrote (`stop_sequences`), not the translated `stop`.
MAX_STOP_SEQUENCES = 4

_TRANSLATED = frozenset(
    {"model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "tools", "tool_choice"}
    | {"metadata", "stream", "thinking", "service_tier", "cache_control"}
)
_REFUSED = {
    "top_k": "'top_k' is not supported: chat upstreams have no such parameter.",
    "container": "'container' is not supported: this relay runs no code-execution containers.",
    "mcp_servers": "'mcp_servers' is not supported: this relay connects to no MCP servers.",
}
_SERVICE_TIERS = frozenset({"auto", "standard_only"})
_HINTS = frozenset({"type", "cache_control"})  # keys any block may carry; cache_control is a caching hint, ignored


def to_chat_payload(payload: dict[str, Any], *, max_tokens_cap: int | None = None) -> dict[str, Any]:
    """The chat request (a dict for `validate_chat_request`) for a Messages request, or `InvalidRequest` naming the
    Messages field that cannot be translated. `max_tokens_cap`: the relay's output limit, checked here so that the
    refusal names `max_tokens` whichever chat field carries it."""
    _check_top_level(payload)
    chat: dict[str, Any] = {}
    if "model" in payload:
        chat["model"] = payload["model"]
    # As `max_completion_tokens`: OpenAI's reasoning models refuse `max_tokens`, and every other kind takes either.
    chat["max_completion_tokens"] = _max_tokens(payload.get("max_tokens"), max_tokens_cap)
    chat["messages"] = [*_system(payload.get("system")), *_conversation(payload.get("messages"))]
    _sampling(payload, chat)
    _tools(payload, chat)
    _metadata(payload.get("metadata"), chat)
    if payload.get("stream") is not None:
        chat["stream"] = payload["stream"]  # type-checked by the chat validation, under the same name
    return chat


def _check_top_level(payload: dict[str, Any]) -> None:
    for name, value in payload.items():
        if value is None:
            continue  # a field sent as null is one not sent (a missing max_tokens is refused below)
        if name in _REFUSED:
            raise InvalidRequest(_REFUSED[name], param=name)
        if name not in _TRANSLATED:
            raise InvalidRequest(f"'{name}' is not a Messages API parameter this relay supports.", param=name)
    thinking = payload.get("thinking")
    if thinking is not None and thinking != {"type": "disabled"}:
        raise InvalidRequest(
            'Extended thinking is not supported: only \'thinking\': {"type": "disabled"} is accepted.',
            param="thinking",
        )
    tier = payload.get("service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise InvalidRequest("'service_tier' must be 'auto' or 'standard_only'.", param="service_tier")


def _max_tokens(value: Any, cap: int | None) -> int:
    """Anthropic requires `max_tokens`. It goes on as chat `max_tokens`: the name every OpenAI-compatible server
    knows (the relay reserves budget from either chat field)."""
    if value is None:
        raise InvalidRequest("'max_tokens' is required.", param="max_tokens")
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest("'max_tokens' must be an integer.", param="max_tokens")
    if value < 1:
        raise InvalidRequest("'max_tokens' must be at least 1.", param="max_tokens")
    if cap is not None and value > cap:
        raise InvalidRequest(f"'max_tokens' is {value}; this relay allows at most {cap}.", param="max_tokens")
    return value


def _system(system: Any) -> list[dict[str, Any]]:
    """The system prompt as a leading system message (none when absent or empty)."""
    if system is None:
        return []
    content = _text_content(system, "system")
    return [{"role": "system", "content": content}] if content else []


def _text_content(content: Any, param: str) -> str | list[dict[str, Any]]:
    """Content that may only be text: a string, or text blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"'{param}' must be a string or a list of text blocks.", param=param)
    parts = []
    for kind, block, path in _blocks(content, param):
        if kind != "text":
            raise _unsupported_block(kind, f"{path}.type")
        parts.append(_text_part(block, path))
    return _content(parts)


def _conversation(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list.", param="messages")
    chat: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        param = f"messages.{i}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{param}' must be an object.", param=param)
        _check_keys(message, frozenset({"role", "content"}), param, hints=frozenset())
        role, content = message.get("role"), message.get("content")
        if role == "user":
            chat.extend(_user_turn(content, param))
        elif role == "assistant":
            chat.append(_assistant_turn(content, param))
        elif role == "system":  # the SDK's `SystemMessageParam`: instructions between turns, text only
            chat.append({"role": "system", "content": _text_content(content, f"{param}.content")})
        else:
            raise InvalidRequest(f"'{param}.role' must be 'user', 'assistant' or 'system'.", param=f"{param}.role")
    return chat


def _user_turn(content: Any, param: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as `tool` messages (a chat upstream wants them right after the assistant's
    tool calls), then the rest of the turn as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for kind, block, path in _blocks(content, f"{param}.content"):
        if kind == "tool_result":
            results.append(_tool_result(block, path))
        elif kind == "text":
            parts.append(_text_part(block, path))
        elif kind == "image":
            parts.append(_image_part(block, path))
        else:
            raise _unsupported_block(kind, f"{path}.type")
    if parts or not results:
        results.append({"role": "user", "content": _content(parts)})
    return results


def _assistant_turn(content: Any, param: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for kind, block, path in _blocks(content, f"{param}.content"):
        if kind == "text":
            parts.append(_text_part(block, path))
        elif kind == "tool_use":
            calls.append(_tool_call(block, path))
        elif kind in ("thinking", "redacted_thinking"):
            # The model's own signed scratchpad, which Anthropic checks against its signature when it is sent back.
            # A chat upstream has no field that takes it, and the relay never asks for thinking, so it is dropped.
            continue
        else:
            raise _unsupported_block(kind, f"{path}.type")
    message: dict[str, Any] = {"role": "assistant", "content": _content(parts) if parts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _blocks(content: Any, param: str) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Each content block with its type and its path as the client wrote it."""
    if not isinstance(content, list):
        raise InvalidRequest(f"'{param}' must be a string or a list of content blocks.", param=param)
    for j, block in enumerate(content):
        path = f"{param}.{j}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(f"'{path}' must be a content block with a string 'type'.", param=f"{path}.type")
        yield block["type"], block, path


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A lone text block as a string (what every chat upstream reads), anything else as content parts."""
    if not parts:
        return ""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _text_part(block: dict[str, Any], path: str) -> dict[str, Any]:
    _check_keys(block, frozenset({"text", "citations"}), path)
    if block.get("citations"):
        raise InvalidRequest("Citations are not supported by this relay.", param=f"{path}.citations")
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"'{path}.text' must be a string.", param=f"{path}.text")
    return {"type": "text", "text": text}


def _image_part(block: dict[str, Any], path: str) -> dict[str, Any]:
    """An image as a chat `image_url` part: base64 data as a data URL, a URL as it is."""
    _check_keys(block, frozenset({"source"}), path)
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if not isinstance(source, dict) or kind not in ("base64", "url"):
        raise InvalidRequest(
            "An image's source must be of type 'base64' or 'url' (files are not supported).",
            param=f"{path}.source.type",
        )
    if kind == "base64":
        _check_keys(source, frozenset({"media_type", "data"}), f"{path}.source", hints=frozenset({"type"}))
        url = (
            f"data:{_string(source, 'media_type', f'{path}.source')};base64,{_string(source, 'data', f'{path}.source')}"
        )
    else:
        _check_keys(source, frozenset({"url"}), f"{path}.source", hints=frozenset({"type"}))
        url = _string(source, "url", f"{path}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_call(block: dict[str, Any], path: str) -> dict[str, Any]:
    _check_keys(block, frozenset({"id", "name", "input"}), path)
    arguments = block.get("input")
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"'{path}.input' must be an object.", param=f"{path}.input")
    return {
        "id": _string(block, "id", path),
        "type": "function",
        "function": {"name": _string(block, "name", path), "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def _tool_result(block: dict[str, Any], path: str) -> dict[str, Any]:
    """A tool result as a `tool` message. Chat has no error flag, so a failed tool's text says so itself."""
    _check_keys(block, frozenset({"tool_use_id", "content", "is_error"}), path)
    tool_call_id = _string(block, "tool_use_id", path)
    is_error = block.get("is_error", False)
    if not isinstance(is_error, bool):
        raise InvalidRequest(f"'{path}.is_error' must be a boolean.", param=f"{path}.is_error")
    content = block.get("content")
    if content is None or isinstance(content, str):
        text = content or ""
        return {"role": "tool", "tool_call_id": tool_call_id, "content": f"Error: {text}" if is_error else text}
    parts = [{"type": "text", "text": "Error: "}] if is_error else []
    for kind, part, part_path in _blocks(content, f"{path}.content"):
        if kind != "text":
            raise _unsupported_block(kind, f"{part_path}.type", where="in a tool result")
        parts.append(_text_part(part, part_path))
    return {"role": "tool", "tool_call_id": tool_call_id, "content": _content(parts)}


def _sampling(payload: dict[str, Any], chat: dict[str, Any]) -> None:
    for name in ("temperature", "top_p"):  # Anthropic's range for both is 0..1 (chat's temperature goes to 2)
        value = payload.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
            raise InvalidRequest(f"'{name}' must be a number from 0 to 1.", param=name)
        chat[name] = value
    stop = payload.get("stop_sequences")
    if stop is None:
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("'stop_sequences' must be a list of strings.", param="stop_sequences")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(
            f"'stop_sequences' has {len(stop)} entries; chat upstreams take at most {MAX_STOP_SEQUENCES}.",
            param="stop_sequences",
        )
    if stop:
        chat["stop"] = stop


def _tools(payload: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = payload.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list.", param="tools")
    if tools:
        chat["tools"] = [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]
    choice = payload.get("tool_choice")
    if choice is not None:
        _tool_choice(choice, chat)


def _tool(tool: Any, path: str) -> dict[str, Any]:
    """A custom tool as a chat function. Server tools (web search, bash, text editor, computer use...) run on
    Anthropic's platform; a chat upstream has none of them, so they are refused."""
    if not isinstance(tool, dict):
        raise InvalidRequest(f"'{path}' must be an object.", param=path)
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise InvalidRequest(
            f"Tools of type {kind!r} are not supported: this relay offers custom tools only.", param=f"{path}.type"
        )
    _check_keys(tool, frozenset({"name", "description", "input_schema", "strict"}), path)
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise InvalidRequest(f"'{path}.input_schema' must be an object.", param=f"{path}.input_schema")
    function: dict[str, Any] = {"name": _string(tool, "name", path), "parameters": schema}
    for key, kinds in (("description", str), ("strict", bool)):
        value = tool.get(key)
        if value is not None and not isinstance(value, kinds):
            raise InvalidRequest(f"'{path}.{key}' must be a {kinds.__name__}.", param=f"{path}.{key}")
        if value is not None:
            function[key] = value
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or kind not in ("auto", "any", "tool", "none"):
        raise InvalidRequest("'tool_choice.type' must be 'auto', 'any', 'tool' or 'none'.", param="tool_choice.type")
    allowed = {"name", "disable_parallel_tool_use"} if kind == "tool" else {"disable_parallel_tool_use"}
    _check_keys(choice, frozenset(allowed), "tool_choice", hints=frozenset({"type"}))
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        param = "tool_choice.disable_parallel_tool_use"
        raise InvalidRequest(f"'{param}' must be a boolean.", param=param)
    tools = chat.get("tools")
    if tools is None:
        if kind in ("any", "tool"):
            raise InvalidRequest(f"'tool_choice' of type {kind!r} needs 'tools'.", param="tool_choice")
        return  # auto or none with no tools: the answer is the same without it (chat refuses it without tools)
    if kind == "tool":
        name = _string(choice, "name", "tool_choice")
        if name not in {tool["function"]["name"] for tool in tools}:
            raise InvalidRequest(f"'tool_choice.name' names no tool in 'tools': {name!r}.", param="tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if disable and kind != "none":
        chat["parallel_tool_calls"] = False


def _metadata(metadata: Any, chat: dict[str, Any]) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object.", param="metadata")
    _check_keys(metadata, frozenset({"user_id"}), "metadata", hints=frozenset())
    user_id = metadata.get("user_id")
    if user_id is not None:
        chat["user"] = _string(metadata, "user_id", "metadata")


def _check_keys(obj: dict[str, Any], allowed: frozenset[str], path: str, *, hints: frozenset[str] = _HINTS) -> None:
    """Refuse a key the translation would otherwise drop (a null value is one not sent)."""
    for key, value in obj.items():
        if key not in allowed and key not in hints and value is not None:
            raise InvalidRequest(f"'{path}.{key}' is not supported by this relay.", param=f"{path}.{key}")


def _string(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{path}.{key}' must be a non-empty string.", param=f"{path}.{key}")
    return value


def _unsupported_block(kind: str, param: str, *, where: str = "") -> InvalidRequest:
    place = f" {where}" if where else ""
    return InvalidRequest(f"Content blocks of type {kind!r}{place} are not supported by this relay.", param=param)

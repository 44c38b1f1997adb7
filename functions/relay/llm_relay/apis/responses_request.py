"""OpenAI Responses request → the relay's chat request (pure).

The relay answers a Responses request as a chat completion, so it translates rather than forwards: a field it does
not know could change the answer in a way it cannot see, so it is refused (400, `param` naming the field as the
client wrote it), never dropped. What needs state the relay does not keep (stored responses, conversations,
stored prompts, background runs) or tools it does not run (OpenAI's built-in tools) is refused the same way,
before anything is admitted or metered. A field set to null is a field left out, as the API reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequest

__all__ = ["to_chat_payload"]

# Same name and meaning in both APIs: passed on as they are (the chat validation type-checks its own fields).
_FORWARDED = (
    "model",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "stream",
)
_TRANSLATED = frozenset({"input", "instructions", "max_output_tokens", "tools", "tool_choice", "text", "reasoning"})

_NO_STATE = "this relay stores no responses or conversations: send the whole conversation in 'input'"


def _never(value: Any) -> bool:
    return False


# Fields accepted only at the value that asks for nothing (besides null): the test, and why anything else is refused.
_ONLY_DEFAULT: dict[str, tuple[Callable[[Any], bool], str]] = {
    "store": (lambda v: v is False, "'store' must be false or left out: this relay stores no responses."),
    "background": (
        lambda v: v is False,
        "'background' responses are not supported: this relay answers while the client is connected "
        "(use 'stream': true for long answers).",
    ),
    "include": (
        lambda v: v == [],
        "'include' is not supported: this relay renders no extra output data (encrypted reasoning, logprobs, "
        "tool results). Leave 'include' out.",
    ),
    "truncation": (
        lambda v: v == "disabled",
        "'truncation' must be 'disabled' or left out: this relay does not shorten the conversation for you.",
    ),
    "top_logprobs": (
        lambda v: v == 0,
        "'top_logprobs' is not supported: this relay does not render log probabilities. Leave it out.",
    ),
    "stream_options": (lambda v: isinstance(v, dict), "'stream_options' must be an object."),
    "previous_response_id": (_never, f"'previous_response_id' is not supported: {_NO_STATE}."),
    "conversation": (_never, f"'conversation' is not supported: {_NO_STATE}."),
    "prompt": (_never, "'prompt' (a stored prompt) is not supported: send 'instructions' and 'input' instead."),
    "max_tool_calls": (_never, "'max_tool_calls' is not supported: chat models take no such limit. Leave it out."),
    "context_management": (_never, "'context_management' is not supported: this relay does not compact context."),
}

_TEXT_PARTS = frozenset({"input_text", "output_text"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "strict"})
_SCHEMA_KEYS = frozenset({"type", "name", "schema", "strict", "description"})


def to_chat_payload(payload: dict[str, Any], *, max_tokens_cap: int | None = None) -> dict[str, Any]:
    """The chat request (a JSON object, still to be validated as one) asking what the Responses request asks, or
    `InvalidRequest` naming the field the relay cannot honour. `max_tokens_cap`: the relay's output limit, checked
    here so that the refusal names `max_output_tokens` as the client wrote it."""
    _check_fields(payload)
    chat: dict[str, Any] = {name: payload[name] for name in _FORWARDED if payload.get(name) is not None}
    chat["messages"] = _messages(payload)
    limit = _output_limit(payload.get("max_output_tokens"), max_tokens_cap)
    if limit is not None:
        chat["max_completion_tokens"] = limit
    if payload.get("tools") is not None:
        chat["tools"] = _tools(payload["tools"])
    if payload.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(payload["tool_choice"])
    chat.update(_text(payload.get("text")))
    chat.update(_reasoning(payload.get("reasoning")))
    return chat


def _check_fields(payload: dict[str, Any]) -> None:
    for name, value in payload.items():
        if value is None or name in _FORWARDED or name in _TRANSLATED:
            continue
        if name in _ONLY_DEFAULT:
            accepted, message = _ONLY_DEFAULT[name]
            if not accepted(value):
                raise InvalidRequest(message, param=name)
            continue
        raise InvalidRequest(
            f"'{name}' is not supported by this relay: it answers a Responses request as a chat completion and "
            f"cannot pass on a field it does not know. Leave '{name}' out.",
            param=name,
        )


def _output_limit(value: Any, cap: int | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest("'max_output_tokens' must be a positive integer.", param="max_output_tokens")
    if cap is not None and value > cap:
        raise InvalidRequest(
            f"'max_output_tokens' is {value}; this relay allows at most {cap}.", param="max_output_tokens"
        )
    return value


# --- input ---------------------------------------------------------------------------------------------------------


def _messages(payload: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = payload.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequest("'instructions' must be a string.", param="instructions")
        messages.append({"role": "system", "content": instructions})
    source = payload.get("input")
    if isinstance(source, str):
        messages.append({"role": "user", "content": source})
    elif isinstance(source, list) and source:
        for i, item in enumerate(source):
            _add_item(messages, item, f"input.{i}")
    elif source is None or isinstance(source, list):
        raise InvalidRequest("'input' is required: a string, or a non-empty list of items.", param="input")
    else:
        raise InvalidRequest("'input' must be a string or a list of items.", param="input")
    return messages


def _add_item(messages: list[dict[str, Any]], item: Any, param: str) -> None:
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{param}' must be an object (an input item).", param=param)
    kind = item.get("type", "message")
    if kind == "message":
        messages.append(_message(item, param))
    elif kind == "function_call":
        call = _function_call(item, param)
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":  # the model's turn: its text and calls in one message
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        messages.append(_function_output(item, param))
    elif kind == "reasoning":
        # A response's output sent back as input (`input += response.output`, the SDK's tool loop) holds the model's
        # reasoning items: dropped, as Anthropic's thinking blocks are. Nothing stores them here (`store: false`), and a
        # chat upstream takes no reasoning back.
        return
    else:
        raise InvalidRequest(
            f"Input items of type {kind!r} cannot be sent through this relay: it takes messages, 'function_call' "
            f"and 'function_call_output' items (a chat model takes nothing else back). Leave the item out.",
            param=f"{param}.type",
        )


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise InvalidRequest(
            f"'{param}.role' must be one of 'user', 'assistant', 'system' or 'developer'.", param=f"{param}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{param}.content' must be a string or a list of content parts.", param=f"{param}.content"
        )
    if role == "assistant":
        return _assistant_message(content, f"{param}.content")
    return {"role": role, "content": [_input_part(part, f"{param}.content.{j}") for j, part in enumerate(content)]}


def _assistant_message(parts: list[Any], param: str) -> dict[str, Any]:
    """An earlier answer: its text parts joined (every chat upstream takes assistant text as one string)."""
    texts: list[str] = []
    refusals: list[str] = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            texts.append(_string(part, "text", f"{param}.{j}"))
        elif kind == "refusal":
            refusals.append(_string(part, "refusal", f"{param}.{j}"))
        else:
            raise _part_refused(kind, f"{param}.{j}.type")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not refusals else None}
    if refusals:
        message["refusal"] = "".join(refusals)
    return message


def _input_part(part: Any, param: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": _string(part, "text", param)}
    if kind == "input_image":
        if part.get("file_id") is not None:
            raise InvalidRequest(
                "Images by 'file_id' are not supported: this relay has no file store. Send 'image_url' (a URL or a "
                "data: URL) instead.",
                param=f"{param}.file_id",
            )
        image: dict[str, Any] = {"url": _string(part, "image_url", param)}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise _part_refused(kind, f"{param}.type")


def _part_refused(kind: Any, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Content parts of type {kind!r} cannot be sent through this relay: it takes 'input_text', 'output_text', "
        "'input_image' (by URL) and 'refusal' parts.",
        param=param,
    )


def _function_call(item: dict[str, Any], param: str) -> dict[str, Any]:
    call_id = _string(item, "call_id", param)
    name = _string(item, "name", param)
    arguments = _string(item, "arguments", param)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _function_output(item: dict[str, Any], param: str) -> dict[str, Any]:
    call_id = _string(item, "call_id", param)
    output = item.get("output")
    if isinstance(output, list):
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(output):
            if not isinstance(part, dict) or part.get("type") != "input_text":
                kind = part.get("type") if isinstance(part, dict) else None
                raise InvalidRequest(
                    f"Function call output parts of type {kind!r} cannot be sent through this relay: a chat tool "
                    "result takes text only ('input_text').",
                    param=f"{param}.output.{j}.type",
                )
            parts.append({"type": "text", "text": _string(part, "text", f"{param}.output.{j}")})
        return {"role": "tool", "tool_call_id": call_id, "content": parts}
    if not isinstance(output, str):
        raise InvalidRequest(f"'{param}.output' must be a string or a list of parts.", param=f"{param}.output")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def _unsupported(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{param}' is not supported by this relay: it passes on only the fields it translates. Leave it out.",
        param=param,
    )


def _string(obj: dict[str, Any], key: str, param: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}.{key}' must be a string.", param=f"{param}.{key}")
    return value


# --- tools, text format, reasoning ---------------------------------------------------------------------------------


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list of tools.", param="tools")
    return [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]


def _tool(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise InvalidRequest(f"'{param}' must be an object (a tool).", param=param)
    kind = tool.get("type")
    if kind != "function":
        raise InvalidRequest(
            f"Tools of type {kind!r} are not available through this relay: it runs no built-in tools (web search, "
            "file search, code interpreter, MCP, ...). Declare 'function' tools and run them yourself.",
            param=f"{param}.type",
        )
    for key, value in tool.items():
        if key not in _TOOL_KEYS and value is not None:
            raise _unsupported(f"{param}.{key}")
    function: dict[str, Any] = {"name": _string(tool, "name", param)}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return str(choice)
    if isinstance(choice, dict):
        if choice.get("type") == "function":
            return {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
        raise InvalidRequest(
            f"A 'tool_choice' of type {choice.get('type')!r} is not supported by this relay: use 'auto', 'none', "
            "'required' or {'type': 'function', 'name': ...}.",
            param="tool_choice.type",
        )
    raise InvalidRequest(
        "'tool_choice' must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}.", param="tool_choice"
    )


def _text(text: Any) -> dict[str, Any]:
    """`text.format` as the chat `response_format` (plain text is the chat default, so it adds nothing: upstreams
    that take no `response_format` at all still serve it); `text.verbosity` as the chat `verbosity`."""
    if text is None:
        return {}
    if not isinstance(text, dict):
        raise InvalidRequest("'text' must be an object.", param="text")
    chat: dict[str, Any] = {}
    for key, value in text.items():
        if value is None:
            continue
        if key == "format":
            chat.update(_text_format(value))
        elif key == "verbosity":
            chat["verbosity"] = value
        else:
            raise _unsupported(f"text.{key}")
    return chat


def _text_format(fmt: Any) -> dict[str, Any]:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind != "json_schema":
        raise InvalidRequest(
            "'text.format.type' must be 'text', 'json_object' or 'json_schema'.", param="text.format.type"
        )
    assert isinstance(fmt, dict)
    for key, value in fmt.items():
        if key not in _SCHEMA_KEYS and value is not None:
            raise _unsupported(f"text.format.{key}")
    if not isinstance(fmt.get("schema"), dict):
        raise InvalidRequest("'text.format.schema' must be a JSON schema (an object).", param="text.format.schema")
    schema: dict[str, Any] = {"name": _string(fmt, "name", "text.format"), "schema": fmt["schema"]}
    for key in ("strict", "description"):
        if fmt.get(key) is not None:
            schema[key] = fmt[key]
    return {"response_format": {"type": "json_schema", "json_schema": schema}}


def _reasoning(reasoning: Any) -> dict[str, Any]:
    if reasoning is None:
        return {}
    if not isinstance(reasoning, dict):
        raise InvalidRequest("'reasoning' must be an object.", param="reasoning")
    chat: dict[str, Any] = {}
    for key, value in reasoning.items():
        if value is None:
            continue
        if key == "effort":
            chat["reasoning_effort"] = value
        elif key in ("summary", "generate_summary"):
            raise InvalidRequest(
                f"'reasoning.{key}' is not supported: chat models return no reasoning summaries. Leave it out.",
                param=f"reasoning.{key}",
            )
        else:
            raise _unsupported(f"reasoning.{key}")
    return chat

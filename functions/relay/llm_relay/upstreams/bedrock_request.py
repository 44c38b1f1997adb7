"""OpenAI chat request → Bedrock `ConverseStream` parameters (pure, no botocore).

Converse has its own shape: system prompts beside the conversation (not in it), roles that alternate between
`user` and `assistant`, tool results sent by the user, tool calls as `toolUse` blocks with parsed JSON input. A
field Converse cannot honour is refused with a 400 naming it (`InvalidRequest(param=...)`), never dropped: a
client that asked for `seed` or `response_format` must not get an answer that silently ignored it.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidRequest

__all__ = ["converse_params"]

# Fields that are translated, or implicit in a ConverseStream call (it always streams, always reports usage).
_IMPLICIT = frozenset({"model", "messages", "stream", "stream_options"})
_TRANSLATED = frozenset(
    {"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "user", "tools", "tool_choice"}
)
_MESSAGE_KEYS = {
    "system": frozenset({"role", "content"}),
    "developer": frozenset({"role", "content"}),
    "user": frozenset({"role", "content"}),
    "assistant": frozenset({"role", "content", "tool_calls"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}


def _refuse(param: str, what: str | None = None) -> InvalidRequest:
    return InvalidRequest(f"{what or repr(param)} is not supported by the Bedrock upstream.", param=param)


def converse_params(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The keyword arguments of `client.converse_stream(...)` for the relay's upstream body."""
    _check_top_level(body)
    system, messages = _conversation(body.get("messages") or [])
    params: dict[str, Any] = {"modelId": model, "messages": messages}
    if system:
        params["system"] = system
    inference = _inference_config(body)
    if inference:
        params["inferenceConfig"] = inference
    tool_config = _tool_config(body)
    if tool_config:
        params["toolConfig"] = tool_config
    if "user" in body:
        params["requestMetadata"] = {"user": str(body["user"])}
    return params


def _check_top_level(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if name in _IMPLICIT or name in _TRANSLATED or value is None:
            continue
        if name == "n" and value == 1:
            continue  # the default, always present in a validated request
        if name == "parallel_tool_calls" and value is True:
            continue  # Converse models may call tools in parallel: the default is what it does
        raise _refuse(name)


def _conversation(raw: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System text blocks, and the messages with consecutive same-role turns merged (Converse needs them to
    alternate; tool results travel in a user turn). A system message later in the conversation joins the
    system prompt: Converse has no place for one between turns."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        role = message.get("role")
        if role not in _MESSAGE_KEYS:
            raise _refuse(f"messages.{i}.role", f"role {role!r}")
        for key, value in message.items():
            if key not in _MESSAGE_KEYS[role] and value not in (None, []):
                raise _refuse(f"messages.{i}.{key}")
        if role in ("system", "developer"):
            system.extend(_text_blocks(message.get("content"), f"messages.{i}.content"))
            continue
        blocks = _message_blocks(message, i)
        bedrock_role = "assistant" if role == "assistant" else "user"
        if messages and messages[-1]["role"] == bedrock_role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": bedrock_role, "content": blocks})
    return system, messages


def _message_blocks(message: dict[str, Any], i: int) -> list[dict[str, Any]]:
    if message["role"] == "tool":
        tool_use_id = message.get("tool_call_id")
        if not isinstance(tool_use_id, str) or not tool_use_id:
            raise InvalidRequest("A tool message needs its 'tool_call_id'.", param=f"messages.{i}.tool_call_id")
        content = _text_blocks(message.get("content"), f"messages.{i}.content") or [{"text": ""}]
        return [{"toolResult": {"toolUseId": tool_use_id, "content": content}}]
    blocks = _text_blocks(message.get("content"), f"messages.{i}.content")
    for j, call in enumerate(message.get("tool_calls") or []):
        blocks.append(_tool_use(call, f"messages.{i}.tool_calls.{j}"))
    return blocks


def _text_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """Text content as Converse text blocks; empty text is left out (Converse refuses blank blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise _refuse(f"{param}.{j}.type", f"content part type {kind!r}")
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest("A text content part needs a string 'text'.", param=f"{param}.{j}.text")
        if text:
            blocks.append({"text": text})
    return blocks


def _tool_use(call: Any, param: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or call.get("type", "function") != "function":
        raise _refuse(f"{param}.type", "a tool call that is not a function call")
    name, arguments = function.get("name"), function.get("arguments") or "{}"
    if not isinstance(name, str) or not isinstance(call.get("id"), str):
        raise InvalidRequest("A tool call needs a string 'id' and 'function.name'.", param=param)
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidRequest(
            "Tool call arguments must be a JSON object (as text) for the Bedrock upstream.",
            param=f"{param}.function.arguments",
        )
    return {"toolUse": {"toolUseId": call["id"], "name": name, "input": parsed}}


def _inference_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        config["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    if stop is not None:
        sequences = [stop] if isinstance(stop, str) else stop
        if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
            raise InvalidRequest("'stop' must be a string or a list of strings.", param="stop")
        if sequences:
            config["stopSequences"] = sequences
    return config


def _tool_config(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        if choice is not None:
            raise InvalidRequest("'tool_choice' needs 'tools'.", param="tool_choice")
        return {}
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list.", param="tools")
    config: dict[str, Any] = {"tools": [_tool_spec(tool, f"tools.{i}") for i, tool in enumerate(tools)]}
    if choice is not None:
        config["toolChoice"] = _tool_choice(choice)
    return config


def _tool_spec(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise _refuse(f"{param}.type", "a tool that is not a function")
    function = tool["function"]
    for key in function:
        if key not in ("name", "description", "parameters", "strict"):
            raise _refuse(f"{param}.function.{key}")
    if not isinstance(function.get("name"), str):
        raise InvalidRequest("A tool needs a string 'function.name'.", param=f"{param}.function.name")
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    spec: dict[str, Any] = {"name": function["name"], "inputSchema": {"json": schema}}
    if function.get("description"):
        spec["description"] = function["description"]
    if function.get("strict") is not None:
        spec["strict"] = function["strict"]
    return {"toolSpec": spec}


def _tool_choice(choice: Any) -> dict[str, Any]:
    if choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if isinstance(name, str):
            return {"tool": {"name": name}}
    if choice == "none":
        raise _refuse("tool_choice", "tool_choice 'none'")
    raise InvalidRequest("'tool_choice' must be 'auto', 'required' or a function.", param="tool_choice")

"""An OpenAI chat request as Ollama's native `/api/chat` body (pure).

Ollama's native API has no place for several OpenAI fields, and it ignores what it does not know. So every field
is either translated or refused: a client that asked for `n: 3` or `logit_bias` gets a 400 naming the field, not
an answer that silently ignored it. What translates: messages (text parts joined, base64 `data:` images, assistant
tool calls with their arguments as an object, tool results named by the call they answer), `tools` (Ollama takes
the OpenAI function format), the sampling fields Ollama keeps in `options`, and `response_format` as `format`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequest

__all__ = ["ollama_body"]

# Set by the relay, translated apart, or the caller's end user (spend attribution, not a generation parameter).
_UNUSED = frozenset({"model", "messages", "stream", "stream_options", "user"})
_OPTIONS = {"temperature": float, "top_p": float, "presence_penalty": float, "frequency_penalty": float, "seed": int}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


def ollama_body(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The `/api/chat` body for `body` (the relay's validated, OpenAI-shaped request); `InvalidRequest` names the
    first field Ollama cannot honour."""
    out: dict[str, Any] = {"model": model, "messages": _messages(body.get("messages") or []), "stream": True}
    options: dict[str, Any] = {}
    for name, value in body.items():
        if name in _UNUSED or value is None:
            continue
        translate = _FIELDS.get(name)
        if translate is None:
            raise _unsupported(name)
        translate(name, value, out, options)
    if options:
        out["options"] = options
    return out


def _unsupported(param: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' is not supported by the Ollama upstream.", param=param)


def _invalid(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {why}.", param=param)


def _option(name: str, value: Any, out: dict[str, Any], options: dict[str, Any]) -> None:
    kind = _OPTIONS[name]
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        raise _invalid(name, f"expected {'an integer' if kind is int else 'a number'}")
    options[name] = value


def _max_tokens(name: str, value: Any, out: dict[str, Any], options: dict[str, Any]) -> None:
    """Both OpenAI spellings are caps on the output: the smaller honours both."""
    options["num_predict"] = min(value, options.get("num_predict", value))


def _stop(name: str, value: Any, out: dict[str, Any], options: dict[str, Any]) -> None:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _invalid(name, "expected a string or a list of strings")
    options["stop"] = stops


def _n(name: str, value: Any, out: dict[str, Any], options: dict[str, Any]) -> None:
    if value != 1:
        raise InvalidRequest("'n' other than 1 is not supported by the Ollama upstream.", param=name)


def _logprobs(name: str, value: Any, out: dict[str, Any], options: dict[str, Any]) -> None:
    if value is not False:
        raise _unsupported(name)


def _tools(name: str, value: Any, out: dict[str, Any], options: dict[str, Any]) -> None:
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise _invalid(name, "expected a list of tools")
    for j, tool in enumerate(value):
        if tool.get("type") != "function":
            raise InvalidRequest(
                f"Tools of type {tool.get('type')!r} are not supported by the Ollama upstream.",
                param=f"{name}.{j}.type",
            )
    out["tools"] = value


def _tool_choice(name: str, value: Any, out: dict[str, Any], options: dict[str, Any]) -> None:
    if value != "auto":  # Ollama always lets the model choose
        raise InvalidRequest("'tool_choice' other than 'auto' is not supported by the Ollama upstream.", param=name)


def _response_format(name: str, value: Any, out: dict[str, Any], options: dict[str, Any]) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "json_object":
        out["format"] = "json"
    elif kind == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise _invalid(f"{name}.json_schema.schema", "expected a JSON schema object")
        out["format"] = schema
    elif kind != "text":
        raise InvalidRequest(f"'{name}' of type {kind!r} is not supported by the Ollama upstream.", param=name)


_Translate = Callable[[str, Any, dict[str, Any], dict[str, Any]], None]
_FIELDS: dict[str, _Translate] = {
    **dict.fromkeys(_OPTIONS, _option),
    "max_tokens": _max_tokens,
    "max_completion_tokens": _max_tokens,
    "stop": _stop,
    "n": _n,
    "logprobs": _logprobs,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "response_format": _response_format,
}


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tool_names: dict[str, str] = {}  # call id -> function name: Ollama matches a tool result by the tool's name
    out = []
    for i, message in enumerate(messages):
        out.append(_message(f"messages.{i}", message, tool_names))
    return out


def _message(param: str, message: dict[str, Any], tool_names: dict[str, str]) -> dict[str, Any]:
    role = message["role"]
    if role not in _ROLES:
        raise InvalidRequest(f"The role '{role}' is not supported by the Ollama upstream.", param=f"{param}.role")
    extra = sorted(message.keys() - _MESSAGE_KEYS)
    if extra:
        raise _unsupported(f"{param}.{extra[0]}")
    out: dict[str, Any] = {"role": _ROLES[role]}
    out["content"], images = _content(f"{param}.content", message.get("content"))
    if images:
        out["images"] = images
    if message.get("tool_calls"):
        if role != "assistant":
            raise _unsupported(f"{param}.tool_calls")
        out["tool_calls"] = _tool_calls(f"{param}.tool_calls", message["tool_calls"], tool_names)
    name = message.get("name") or tool_names.get(str(message.get("tool_call_id")))
    if role == "tool" and name:
        out["tool_name"] = name
    elif message.get("name"):
        raise _unsupported(f"{param}.name")
    return out


def _content(param: str, content: Any) -> tuple[str, list[str]]:
    """The text of a message's content (parts joined by newlines) and its images as base64."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image(f"{param}.{j}.image_url.url", part.get("image_url")))
        else:
            raise InvalidRequest(
                f"Content parts of type {kind!r} are not supported by the Ollama upstream.", param=f"{param}.{j}.type"
            )
    return "\n".join(texts), images


def _image(param: str, image_url: Any) -> str:
    """Ollama takes images inline as base64: a `data:` URL's payload. It fetches no URLs."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    head, comma, data = url.partition(",") if isinstance(url, str) else ("", "", "")
    if not (head.startswith("data:") and head.endswith(";base64") and comma and data):
        raise InvalidRequest(
            "The Ollama upstream takes images only as base64 data: URLs (it fetches no URLs).", param=param
        )
    return data


def _tool_calls(param: str, calls: Any, tool_names: dict[str, str]) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise _invalid(param, "expected a list of tool calls")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _invalid(f"{param}.{j}.function", "expected a function with a name")
        arguments = _arguments(f"{param}.{j}.function.arguments", function.get("arguments"))
        if isinstance(call.get("id"), str):
            tool_names[call["id"]] = function["name"]
        out.append({"function": {"name": function["name"], "arguments": arguments}})
    return out


def _arguments(param: str, raw: Any) -> dict[str, Any]:
    """OpenAI sends arguments as a JSON string; Ollama wants the object itself."""
    if raw is None or raw == "":
        return {}
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except (json.JSONDecodeError, RecursionError):
        raise _invalid(param, "expected a JSON object") from None
    if not isinstance(arguments, dict):
        raise _invalid(param, "expected a JSON object")
    return arguments

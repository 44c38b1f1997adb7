"""ollama_body: each OpenAI field translated to Ollama's /api/chat, or refused with a 400 naming it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from llm_relay.chat_request import ChatRequest
from llm_relay.errors import InvalidRequest
from llm_relay.upstreams.ndjson import OllamaDialect
from llm_relay.upstreams.ollama_request import ollama_body

USER = {"role": "user", "content": "Hi"}


def _body(**fields: Any) -> dict[str, Any]:
    """What the relay hands a dialect: the validated request's upstream body."""
    return ChatRequest.model_validate({"model": "client-model", "messages": [USER], **fields}).upstream_body()


def _refused(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        ollama_body(body, "llama3.2")
    assert caught.value.status_code == 400
    return caught.value


def test_minimal_request() -> None:
    # GIVEN the relay's body (stream, stream_options and n are always there) WHEN translated
    # THEN only what Ollama needs is sent, with the route's model
    assert ollama_body(_body(), "llama3.2") == {"model": "llama3.2", "messages": [USER], "stream": True}


def test_sampling_fields_go_to_options() -> None:
    body = _body(max_tokens=50, temperature=0.2, top_p=0.9, stop="END", seed=7, presence_penalty=0.5)
    body["frequency_penalty"] = 1
    assert ollama_body(body, "m")["options"] == {
        "num_predict": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": 1,
    }


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({"max_completion_tokens": 30}, 30), ({"max_tokens": 40, "max_completion_tokens": 30}, 30)],
)
def test_max_completion_tokens_is_num_predict_and_the_smaller_cap_wins(fields: dict[str, Any], expected: int) -> None:
    assert ollama_body(_body(**fields), "m")["options"] == {"num_predict": expected}


def test_stop_list_is_kept() -> None:
    assert ollama_body(_body(stop=["a", "b"]), "m")["options"] == {"stop": ["a", "b"]}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stop": 3}, "stop"),
        ({"seed": "7"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"presence_penalty": True}, "presence_penalty"),
        ({"tools": {"type": "function"}}, "tools"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_wrong_types_are_invalid(fields: dict[str, Any], param: str) -> None:
    error = _refused(_body(**fields))
    assert error.param == param
    assert "Invalid value" in error.message


def test_text_parts_are_joined_and_developer_is_system() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
    ]
    assert ollama_body(_body(messages=messages), "m")["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one\ntwo"},
    ]


def test_data_url_image_becomes_base64() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, part]}]
    assert ollama_body(_body(messages=messages), "m")["messages"] == [
        {"role": "user", "content": "What is it?", "images": ["iVBORw0KGgo="]}
    ]


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "data:image/png,raw", "data:image/png;base64,"])
def test_other_image_urls_are_refused(url: str) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    error = _refused(_body(messages=messages))
    assert error.param == "messages.0.content.0.image_url.url"
    assert "base64 data: URLs" in error.message


def test_other_content_parts_are_refused() -> None:
    messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]
    assert _refused(_body(messages=messages)).param == "messages.0.content.0.type"


def test_tool_round_trip() -> None:
    # GIVEN tools, an assistant tool call (arguments as a JSON string) and its result (by tool_call_id)
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    call = {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    messages = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_9", "content": "12C"},
    ]
    # WHEN translated
    out = ollama_body(_body(messages=messages, tools=[tool], tool_choice="auto"), "m")
    # THEN the tools pass as they are, arguments become an object, the result names its tool
    assert out["tools"] == [tool]
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "12C", "tool_name": "weather"},
    ]


def test_tool_message_name_is_the_tool_name() -> None:
    messages = [USER, {"role": "tool", "tool_call_id": "unknown", "name": "clock", "content": "noon"}]
    assert ollama_body(_body(messages=messages), "m")["messages"][1] == {
        "role": "tool",
        "content": "noon",
        "tool_name": "clock",
    }


@pytest.mark.parametrize("arguments", ["{not json", "[1]"])
def test_tool_call_arguments_must_be_an_object(arguments: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    error = _refused(_body(messages=[USER, {"role": "assistant", "tool_calls": [call]}]))
    assert error.param == "messages.1.tool_calls.0.function.arguments"


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, "json"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}, {"type": "object"}),
        ({"type": "text"}, None),
    ],
)
def test_response_format_is_format(response_format: dict[str, Any], expected: Any) -> None:
    assert ollama_body(_body(response_format=response_format), "m").get("format") == expected


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"mock": {"tokens": 3}}, "mock"),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools.0.type"),
        ({"messages": [{"role": "user", "content": "x", "name": "ann"}]}, "messages.0.name"),
        ({"messages": [{"role": "user", "content": "x", "audio": {"id": "a"}}]}, "messages.0.audio"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [{}]}]}, "messages.0.tool_calls"),
    ],
)
def test_what_ollama_cannot_honour_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    error = _refused(_body(**fields))
    assert error.param == param
    assert "not supported by the Ollama upstream" in error.message


def test_logprobs_false_is_accepted() -> None:
    assert "logprobs" not in ollama_body(_body(logprobs=False), "m")


def test_dialect_request() -> None:
    # GIVEN an Ollama dialect with a key WHEN it builds a request
    async def key() -> str:
        return "sk-ollama"

    dialect = OllamaDialect("http://127.0.0.1:11434/", key)
    request = asyncio.run(dialect.request(_body(temperature=0.5), "llama3.2", "req_1"))
    # THEN it posts the translated body to /api/chat with the relay's headers
    assert dialect.kind == "ollama"
    assert request.url == "http://127.0.0.1:11434/api/chat"
    assert request.headers == {
        "content-type": "application/json",
        "accept": "application/x-ndjson",
        "x-request-id": "req_1",
        "accept-encoding": "identity",
        "authorization": "Bearer sk-ollama",
    }
    assert json.loads(request.content) == {
        "model": "llama3.2",
        "messages": [USER],
        "stream": True,
        "options": {"temperature": 0.5},
    }


def test_dialect_request_without_a_key_sends_no_authorization() -> None:
    async def no_key() -> None:
        return None

    for key in (None, no_key):
        request = asyncio.run(OllamaDialect("http://h", key).request(_body(), "m", "r"))
        assert "authorization" not in request.headers

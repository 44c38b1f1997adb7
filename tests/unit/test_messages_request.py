"""Anthropic Messages requests translated into the relay's chat request: every translation, and every refusal naming
the field as the client wrote it. `MessagesApi.parse` end to end (bytes → validated ChatRequest)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_relay.apis.base import Api
from llm_relay.apis.messages import MessagesApi
from llm_relay.apis.messages_request import to_chat_payload
from llm_relay.chat_request import ChatRequest, validate_chat_request
from llm_relay.errors import InvalidRequest, ModelNotAllowed

CAP = 4096
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 256, "messages": [{"role": "user", "content": "Hi"}], **fields}


def translate(payload: dict[str, Any]) -> dict[str, Any]:
    """The translation, which the chat validation must then accept (as `MessagesApi.parse` runs it)."""
    chat = to_chat_payload(payload, max_tokens_cap=CAP)
    validate_chat_request(chat, max_tokens_cap=CAP, allowed_models=None)
    return chat


def refused(payload: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        to_chat_payload(payload, max_tokens_cap=CAP)
    assert info.value.status_code == 400
    return info.value


def parse(payload: Any, *, allowed: frozenset[str] | None = None) -> ChatRequest:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return MessagesApi().parse(raw, max_tokens_cap=CAP, allowed_models=allowed)


# --- translations --------------------------------------------------------------------------------------------


def test_a_minimal_request_becomes_a_chat_request_with_max_tokens() -> None:
    # GIVEN the smallest Messages request
    # WHEN translated
    chat = translate(request())
    # THEN it is the chat request with the same model, output limit and user message, nothing more
    assert chat == {"model": "claude-x", "max_completion_tokens": 256, "messages": [{"role": "user", "content": "Hi"}]}


def test_every_top_level_parameter_is_translated() -> None:
    # GIVEN a request with a system prompt, sampling, stop sequences, a user id and streaming
    payload = request(
        system="Be terse.",
        temperature=0.5,
        top_p=0.9,
        stop_sequences=["END", "STOP"],
        metadata={"user_id": "u-42"},
        stream=True,
    )
    # WHEN translated
    chat = translate(payload)
    # THEN each is in its chat name, the system prompt leading the messages
    assert chat["messages"][0] == {"role": "system", "content": "Be terse."}
    assert (chat["temperature"], chat["top_p"], chat["stop"]) == (0.5, 0.9, ["END", "STOP"])
    assert (chat["user"], chat["stream"]) == ("u-42", True)


def test_system_text_blocks_become_one_system_message() -> None:
    one = translate(request(system=[{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}]))
    two = translate(request(system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]))
    assert one["messages"][0] == {"role": "system", "content": "A"}
    assert two["messages"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
    }
    assert translate(request(system=""))["messages"] == [{"role": "user", "content": "Hi"}]


def test_a_system_message_between_turns_stays_a_system_message() -> None:
    # GIVEN the SDK's system message in `messages` (text only), between user turns
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Bye"},
    ]
    # WHEN translated
    # THEN it is a chat system message at its place
    assert translate(request(messages=messages))["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Bye"},
    ]


def test_images_become_image_url_parts() -> None:
    # GIVEN a user turn with a base64 image, a URL image and text
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What are these?"},
    ]
    # WHEN translated
    chat = translate(request(messages=[{"role": "user", "content": content}]))
    # THEN the base64 image is a data URL, the URL image its URL, in the client's order
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "What are these?"},
            ],
        }
    ]


def test_a_tool_round_trip_becomes_tool_calls_and_tool_messages() -> None:
    # GIVEN an assistant turn that called two tools (after some text and its thinking), and the user's results
    # followed by more text
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Two cities.", "signature": "c2ln"},
                {"type": "redacted_thinking", "data": "b3BhcXVl"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here you go."},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "Rain"}]},
            ],
        },
    ]
    # WHEN translated
    chat = translate(request(messages=messages, tools=[WEATHER_TOOL]))
    # THEN the calls carry their input as JSON text, the thinking is gone, and the results are tool messages
    # placed before the rest of the user's turn
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Rain"},
        {"role": "user", "content": "Here you go."},
    ]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "The weather in a city",
            },
        }
    ]


def test_an_assistant_turn_of_tool_calls_only_has_no_content_and_a_results_only_turn_no_user_message() -> None:
    messages = [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
    ]
    chat = translate(request(messages=messages, tools=[WEATHER_TOOL]))
    assert chat["messages"][1]["content"] is None
    assert chat["messages"][2:] == [{"role": "tool", "tool_call_id": "t1", "content": ""}]


def test_a_failed_tools_result_says_so_in_its_text() -> None:
    # GIVEN tool results marked is_error, as a string and as text blocks
    results = [
        {"type": "tool_result", "tool_use_id": "t1", "content": "timeout", "is_error": True},
        {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "404"}], "is_error": True},
        {"type": "tool_result", "tool_use_id": "t3", "content": "fine", "is_error": False},
    ]
    # WHEN translated
    chat = translate(request(messages=[{"role": "user", "content": results}]))
    # THEN chat, which has no error flag, gets the failure in the text
    assert [m["content"] for m in chat["messages"]] == [
        "Error: timeout",
        [{"type": "text", "text": "Error: "}, {"type": "text", "text": "404"}],
        "fine",
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_choice_is_translated(choice: dict[str, Any], expected: Any) -> None:
    chat = translate(request(tools=[WEATHER_TOOL], tool_choice=choice))
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat


def test_disabling_parallel_tool_use_turns_parallel_tool_calls_off() -> None:
    chat = translate(request(tools=[WEATHER_TOOL], tool_choice={"type": "any", "disable_parallel_tool_use": True}))
    assert (chat["tool_choice"], chat["parallel_tool_calls"]) == ("required", False)


def test_strict_custom_tools_keep_strict() -> None:
    tool = {**WEATHER_TOOL, "type": "custom", "strict": True, "cache_control": {"type": "ephemeral"}}
    assert translate(request(tools=[tool]))["tools"][0]["function"]["strict"] is True


@pytest.mark.parametrize(
    "fields",
    [
        {"thinking": {"type": "disabled"}},
        {"service_tier": "auto"},
        {"service_tier": "standard_only"},
        {"cache_control": {"type": "ephemeral"}},
        {"tool_choice": {"type": "auto"}},
        {"tool_choice": {"type": "none"}},
        {"top_k": None, "metadata": {"user_id": None}, "system": None, "stop_sequences": []},
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}
            ]
        },
    ],
)
def test_what_changes_no_answer_is_accepted_and_dropped(fields: dict[str, Any]) -> None:
    # GIVEN a request with only fields that ask nothing a chat upstream must do (hints, defaults, nulls)
    # WHEN translated
    # THEN it is the minimal chat request
    assert translate(request(**fields)) == {
        "model": "claude-x",
        "max_completion_tokens": 256,
        "messages": [{"role": "user", "content": "Hi"}],
    }


# --- refusals ------------------------------------------------------------------------------------------------

DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}


def _user(*blocks: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(blocks)}]}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_k": 5}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"container": "container_1"}, "container"),
        ({"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]}, "mcp_servers"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"output_config": {"effort": "low"}}, "output_config"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": CAP + 1}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"metadata": {"user_id": "u", "tenant": "t"}}, "metadata.tenant"),
        ({"metadata": "u"}, "metadata"),
        ({"system": [{"type": "image", "source": {}}]}, "system.0.type"),
        ({"system": 5}, "system"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "Hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "system", "content": [{"type": "image", "source": {}}]}]}, "messages.0.content.0.type"),
        ({"messages": [{"role": "user", "content": "Hi", "name": "bob"}]}, "messages.0.name"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages.0.content.0.type"),
        (_user({"type": "text", "text": "Read this"}, DOCUMENT), "messages.0.content.1.type"),
        (_user({"type": "search_result", "source": "s", "title": "t", "content": []}), "messages.0.content.0.type"),
        (_user({"type": "container_upload", "file_id": "f"}), "messages.0.content.0.type"),
        (_user({"type": "tool_use", "id": "t", "name": "n", "input": {}}), "messages.0.content.0.type"),
        (_user({"type": "text", "text": 5}), "messages.0.content.0.text"),
        (
            _user({"type": "text", "text": "x", "citations": [{"type": "char_location"}]}),
            "messages.0.content.0.citations",
        ),
        (_user({"type": "text", "text": "x", "extra": 1}), "messages.0.content.0.extra"),
        (_user({"type": "image", "source": {"type": "file", "file_id": "f"}}), "messages.0.content.0.source.type"),
        (_user({"type": "image", "source": {"type": "url"}}), "messages.0.content.0.source.url"),
        (
            _user({"type": "tool_result", "tool_use_id": "t", "content": [DOCUMENT]}),
            "messages.0.content.0.content.0.type",
        ),
        (_user({"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}), "messages.0.content.0.is_error"),
        (_user({"type": "tool_result", "content": "x"}), "messages.0.content.0.tool_use_id"),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
            "messages.0.content.0.type",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": "{}"}]}
                ]
            },
            "messages.0.content.0.input",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "server_tool_use", "id": "t", "name": "web_search", "input": {}}],
                    }
                ]
            },
            "messages.0.content.0.type",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"tools": [WEATHER_TOOL, {"type": "bash_20250124", "name": "bash"}]}, "tools.1.type"),
        ({"tools": [{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]}, "tools.0.type"),
        ({"tools": [{"type": "computer_20250124", "name": "computer", "display_width_px": 1024}]}, "tools.0.type"),
        ({"tools": [{"name": "t"}]}, "tools.0.input_schema"),
        ({"tools": [{**WEATHER_TOOL, "input_examples": [{"city": "Paris"}]}]}, "tools.0.input_examples"),
        ({"tools": WEATHER_TOOL}, "tools"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice.name"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "required"}}, "tool_choice.type"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "auto"}, "tool_choice.type"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}},
            "tool_choice.disable_parallel_tool_use",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(fields: dict[str, Any], param: str) -> None:
    # GIVEN a request with a field a chat upstream cannot honour, or of the wrong type
    # WHEN translated
    error = refused(request(**fields))
    # THEN it is a 400 naming the field as the client wrote it
    assert error.param == param


def test_an_unknown_field_is_refused_by_name() -> None:
    error = refused(request(speed="fast"))
    assert error.param == "speed" and "'speed'" in error.message


def test_a_missing_max_tokens_is_refused_because_anthropic_requires_it() -> None:
    payload = request()
    del payload["max_tokens"]
    error = refused(payload)
    assert error.param == "max_tokens" and "required" in error.message


# --- MessagesApi.parse ---------------------------------------------------------------------------------------


def test_parse_validates_the_translated_request() -> None:
    # GIVEN a streaming Messages request as bytes
    chat = parse(request(stream=True, system="S", tools=[WEATHER_TOOL]), allowed=frozenset({"claude-x"}))
    # THEN it is the relay's validated chat request
    assert (chat.model, chat.stream, chat.max_completion_tokens) == ("claude-x", True, 256)
    assert [m.role for m in chat.messages] == ["system", "user"]
    assert chat.upstream_body()["tools"][0]["function"]["name"] == "get_weather"


def test_parse_refuses_what_the_chat_validation_refuses_with_the_same_name() -> None:
    with pytest.raises(InvalidRequest) as not_json:
        parse(b"{nope")
    with pytest.raises(InvalidRequest) as no_model:
        parse({k: v for k, v in request().items() if k != "model"})
    with pytest.raises(InvalidRequest) as bad_stream:
        parse(request(stream="yes"))
    with pytest.raises(ModelNotAllowed):
        parse(request(), allowed=frozenset({"gpt-4o"}))
    assert not_json.value.code == "invalid_json"
    assert (no_model.value.param, bad_stream.value.param) == ("model", "stream")


def test_parse_names_max_tokens_over_the_cap() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(request(max_tokens=CAP + 1))
    assert info.value.param == "max_tokens" and str(CAP) in info.value.message


def test_messages_api_is_an_api() -> None:
    api: Api = MessagesApi()
    assert api.name == "messages"

"""Responses request → chat request: each field translated, and each thing the relay cannot honour refused naming
the field as the client wrote it (before anything is admitted)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_relay.apis.base import Api
from llm_relay.apis.responses import ResponsesApi
from llm_relay.apis.responses_request import to_chat_payload
from llm_relay.errors import InvalidRequest, ModelNotAllowed

_: Api = ResponsesApi()  # mypy checks that the class satisfies the protocol exactly

CAP = 4096
ALLOWED = frozenset({"gpt-4o-mini"})


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "input": "Say hi.", **fields}


def refused(payload: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        to_chat_payload(payload, max_tokens_cap=CAP)
    assert caught.value.status_code == 400
    return caught.value


def parse(payload: dict[str, Any]) -> Any:
    return ResponsesApi().parse(json.dumps(payload).encode(), max_tokens_cap=CAP, allowed_models=ALLOWED)


# --- translated ----------------------------------------------------------------------------------------------------


def test_a_string_input_with_instructions_is_a_system_and_a_user_message() -> None:
    chat = to_chat_payload(request(instructions="Be terse.", stream=True))
    assert chat == {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Say hi."}],
    }


def test_message_items_keep_their_roles_and_their_parts_become_chat_parts() -> None:
    # GIVEN messages of every role, with text and image parts (an image by URL and one inline)
    items = [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "More rules."}]},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
            ],
        },
    ]
    # WHEN translated
    messages = to_chat_payload(request(input=items))["messages"]
    # THEN each is a chat message of the same role, its parts in chat's form
    assert messages == [
        {"role": "developer", "content": "Rules."},
        {"role": "system", "content": [{"type": "text", "text": "More rules."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
    ]


def test_an_earlier_answer_and_its_calls_are_one_assistant_message_and_the_outputs_tool_messages() -> None:
    # GIVEN a previous response's output sent back as it came (ids, statuses, annotations), then the call results
    items = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": [], "logprobs": []}],
        },
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "18C"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "21C"}]},
    ]
    # WHEN translated
    messages = to_chat_payload(request(input=items))["messages"]
    # THEN the model's turn is one assistant message with its text and both calls, then one tool message per output
    assert messages[1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "21C"}]},
    ]


def test_calls_without_text_open_an_assistant_message_of_their_own() -> None:
    items = [
        {"role": "user", "content": "Hi"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
    ]
    messages = to_chat_payload(request(input=items))["messages"]
    assert [(m["role"], len(m.get("tool_calls", []))) for m in messages] == [
        ("user", 0),
        ("assistant", 1),
        ("tool", 0),
        ("assistant", 1),
    ]
    assert messages[1]["content"] is None


def test_an_earlier_refusal_is_the_assistant_refusal() -> None:
    items = [{"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}]
    assert to_chat_payload(request(input=items))["messages"] == [
        {"role": "assistant", "content": None, "refusal": "I can't."}
    ]


def test_sampling_output_and_attribution_fields() -> None:
    # GIVEN every field the two APIs share, and the Responses names of the others
    payload = request(
        max_output_tokens=300,
        temperature=0.2,
        top_p=0.9,
        parallel_tool_calls=False,
        user="u-1",
        metadata={"team": "search"},
        service_tier="flex",
        prompt_cache_key="k",
        safety_identifier="s",
        reasoning={"effort": "low"},
        text={"verbosity": "low"},
    )
    # WHEN translated
    chat = to_chat_payload(payload, max_tokens_cap=CAP)
    # THEN the shared ones are as they were (metadata too: the relay attributes spend with it), the others renamed
    assert {k: v for k, v in chat.items() if k not in ("model", "messages")} == {
        "max_completion_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "user": "u-1",
        "metadata": {"team": "search"},
        "service_tier": "flex",
        "prompt_cache_key": "k",
        "safety_identifier": "s",
        "reasoning_effort": "low",
        "verbosity": "low",
    }


def test_function_tools_and_tool_choices() -> None:
    tool = {
        "type": "function",
        "name": "weather",
        "description": "Weather now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    }
    chat = to_chat_payload(request(tools=[tool], tool_choice={"type": "function", "name": "weather"}))
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather now.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": True,
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    for choice in ("auto", "none", "required"):
        assert to_chat_payload(request(tools=[tool], tool_choice=choice))["tool_choice"] == choice


@pytest.mark.parametrize(
    ("fmt", "response_format"),
    [
        ({"type": "text"}, None),  # the chat default: nothing to ask (upstreams without response_format serve it)
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True, "description": "A"},
            {
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True, "description": "A"},
            },
        ),
    ],
)
def test_text_format_is_the_response_format(fmt: dict[str, Any], response_format: dict[str, Any] | None) -> None:
    assert to_chat_payload(request(text={"format": fmt})).get("response_format") == response_format


def test_what_asks_for_nothing_is_accepted_and_not_passed_on() -> None:
    # GIVEN the stateless, synchronous, untruncated defaults written out, and every optional field as null
    defaults = request(
        store=False, background=False, include=[], truncation="disabled", top_logprobs=0, stream_options={}
    )
    nulls = request(
        **dict.fromkeys(("previous_response_id", "conversation", "prompt", "reasoning", "text", "tools", "user"))
    )
    # THEN neither asks the chat request for anything
    assert to_chat_payload(defaults) == to_chat_payload(nulls) == to_chat_payload(request())


def test_parse_validates_the_translation_as_a_chat_request() -> None:
    chat = parse(request(instructions="Be terse.", max_output_tokens=50, stream=True))
    assert (chat.model, chat.max_completion_tokens, chat.stream) == ("gpt-4o-mini", 50, True)
    assert [m.role for m in chat.messages] == ["system", "user"]


def test_parse_names_the_output_limit_as_the_client_wrote_it() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(request(max_output_tokens=CAP + 1))
    assert caught.value.param == "max_output_tokens"
    assert "max_output_tokens" in caught.value.message and str(CAP) in caught.value.message


def test_parse_refuses_a_model_outside_the_allow_list_and_bad_shared_fields() -> None:
    with pytest.raises(ModelNotAllowed):
        parse(request(model="gpt-4o"))
    with pytest.raises(InvalidRequest) as caught:
        parse(request(temperature="hot"))
    assert caught.value.param == "temperature"
    with pytest.raises(InvalidRequest) as not_json:
        ResponsesApi().parse(b"[1]", max_tokens_cap=CAP, allowed_models=None)
    assert not_json.value.code == "invalid_json"


def test_parse_names_a_conversation_too_long_for_the_relay_as_the_input() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(request(input=[{"role": "user", "content": "x"}] * 4097))
    assert caught.value.param == "input" and "messages" not in caught.value.message


# --- refused -------------------------------------------------------------------------------------------------------

USER_WITH = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"background": True}, "background"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"store": True}, "store"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"max_tool_calls": 2}, "max_tool_calls"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"reasoning": {"effort": "low", "summary": "auto"}}, "reasoning.summary"),
        ({"reasoning": {"generate_summary": "concise"}}, "reasoning.generate_summary"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"tools": [{"type": "function", "name": "f"}, {"type": "file_search"}]}, "tools.1.type"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools.0.type"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools.0.type"),
        ({"tools": [{"type": "computer_use_preview"}]}, "tools.0.type"),
        ({"tools": [{"type": "image_generation"}]}, "tools.0.type"),
        ({"tools": [{"type": "custom", "name": "x"}]}, "tools.0.type"),
        ({"tools": [{"type": "function", "name": "f", "defer_loading": True}]}, "tools.0.defer_loading"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice.type"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": [*USER_WITH, {"type": "item_reference", "id": "msg_1"}]}, "input.2.type"),
        ({"input": [{"type": "file_search_call", "id": "fs_1"}]}, "input.0.type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "Read"}, {"type": "input_file"}]}]},
            "input.0.content.1.type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f1"}]}]},
            "input.0.content.0.file_id",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]}]},
            "input.0.output.0.type",
        ),
    ],
)
def test_what_the_relay_cannot_honour_is_refused_naming_the_field(fields: dict[str, Any], param: str) -> None:
    error = refused(request(**fields))
    assert error.param == param
    # AND the message says what to do, not only what is wrong
    assert any(hint in error.message for hint in ("Leave", "Send", "send", "use", "Declare", "must", "takes"))


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"input": 5}, "input", "'input' must be a string or a list of items"),
        ({"input": None}, "input", "'input' is required"),
        ({"input": []}, "input", "'input' is required"),
        ({"input": [5]}, "input.0", "'input.0' must be an object"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role", "must be one of"),
        ({"input": [{"role": "user", "content": 5}]}, "input.0.content", "must be a string or a list"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input.0.content.0.text", "string"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input.0.call_id", "string"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input.0.output", "string"),
        ({"instructions": ["x"]}, "instructions", "'instructions' must be a string"),
        ({"max_output_tokens": "5"}, "max_output_tokens", "positive integer"),
        ({"max_output_tokens": 0}, "max_output_tokens", "positive integer"),
        ({"max_output_tokens": CAP + 1}, "max_output_tokens", f"at most {CAP}"),
        ({"tools": {"type": "function"}}, "tools", "list"),
        ({"tools": [{"type": "function"}]}, "tools.0.name", "string"),
        ({"tool_choice": "any"}, "tool_choice", "'auto', 'none', 'required'"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", "JSON schema"),
        ({"text": "json"}, "text", "object"),
        ({"reasoning": "high"}, "reasoning", "object"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(fields: dict[str, Any], param: str, message: str) -> None:
    error = refused(request(**fields))
    assert (error.param, message in error.message) == (param, True), error.message


def test_reasoning_items_sent_back_as_input_are_left_out() -> None:
    # GIVEN a response's output sent back (the SDK's tool loop), holding the model's reasoning before its call
    output = [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
    ]
    chat = to_chat_payload({"model": "m", "input": [{"role": "user", "content": "Hi"}, *output]})
    # THEN the reasoning is dropped, and the call and its output go on
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool"]

"""parse_chat_request: strict validation, the allow-list, the max_tokens cap and the upstream body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_relay.chat_request import ChatRequest, parse_chat_request
from llm_relay.errors import InvalidRequest, ModelNotAllowed

CAP = 4096
ALLOWED = frozenset({"gpt-4o-mini", "gpt-4o"})
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi."},
]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, **fields}


def parse(payload: Any, *, cap: int = CAP, allowed: frozenset[str] | None = ALLOWED) -> ChatRequest:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_chat_request(raw, max_tokens_cap=cap, allowed_models=allowed)


def invalid(payload: Any, **kwargs: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(payload, **kwargs)
    assert type(info.value) is InvalidRequest
    assert info.value.status_code == 400
    return info.value


# --- valid requests ------------------------------------------------------------------------------------


def test_minimal_valid_request() -> None:
    # GIVEN a minimal streaming request
    # WHEN parsed
    request = parse(body(stream=True))
    # THEN the fields are read and defaults applied
    assert request.model == "gpt-4o-mini"
    assert request.stream is True
    assert request.n == 1
    assert request.max_tokens is None
    assert request.include_usage is False
    assert request.messages_as_dicts() == MESSAGES


def test_realistic_request_with_tools_and_history() -> None:
    # GIVEN a tool-calling conversation with assistant tool_calls (null content) and a tool result
    messages = [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_A",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_A", "content": '{"temp_c": 21}'},
    ]
    request = parse(
        body(
            messages=messages,
            temperature=1,
            top_p=0.5,
            max_completion_tokens=256,
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        )
    )
    # THEN it validates; an integer temperature is accepted as a float
    assert request.temperature == 1.0
    assert request.max_completion_tokens == 256
    assert [m.role for m in request.messages] == ["developer", "user", "assistant", "tool"]
    assert request.messages_as_dicts()[3] == {"role": "tool", "tool_call_id": "call_A", "content": '{"temp_c": 21}'}


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant", "tool", "function"])
def test_every_known_role_is_accepted(role: str) -> None:
    assert parse(body(messages=[{"role": role, "content": "x"}])).messages[0].role == role


def test_max_tokens_equal_to_cap_is_accepted() -> None:
    assert parse(body(max_tokens=CAP)).max_tokens == CAP
    assert parse(body(max_completion_tokens=CAP)).max_completion_tokens == CAP


def test_null_optional_fields_are_accepted() -> None:
    request = parse(body(max_tokens=None, temperature=None, stream_options=None))
    assert request.max_tokens is None
    assert request.include_usage is False


# --- malformed bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{", b'{"model": "gpt-4o-mini",}', b"\xff\xfe{}", b"nul"])
def test_malformed_json(raw: bytes) -> None:
    # GIVEN a body that is not JSON
    # WHEN parsed
    error = invalid(raw)
    # THEN it is a 400 invalid_json with no param
    assert error.code == "invalid_json"
    assert error.param is None
    assert error.message.startswith("Request body is not valid JSON")


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null", b"true"])
def test_non_object_json(raw: bytes) -> None:
    error = invalid(raw)
    assert error.code == "invalid_json"
    assert error.message == "Request body must be a JSON object."


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    # GIVEN a small (100 kB, under the 1 MiB body cap) but deeply nested JSON body
    raw = b'{"model": "gpt-4o-mini", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    # WHEN parsed
    # THEN it is refused as invalid JSON (not a RecursionError, which becomes a 500)
    error = invalid(raw)
    assert error.code == "invalid_json"


# --- wrong types and values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": 5.0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": "5"}, "max_completion_tokens"),
        ({"stream": "true"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"model": 4}, "model"),
        ({"model": ""}, "model"),
        ({"n": "2"}, "n"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"temperature": "0.7"}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"stream_options": "yes"}, "stream_options"),
        ({"stream_options": {"include_usage": "true"}}, "stream_options.include_usage"),
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages.0"),
        ({"messages": [{"content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "User", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [*MESSAGES, {"role": "user", "content": "x", "name": 7}]}, "messages.2.name"),
    ],
)
def test_wrong_type_or_value_names_the_field(fields: dict[str, Any], param: str) -> None:
    # GIVEN a body with one bad field
    # WHEN parsed
    error = invalid(body(**fields))
    # THEN it is a 400 whose param and message name that field
    assert error.param == param
    assert error.code == "invalid_request"
    assert error.error_type == "invalid_request_error"
    assert error.message.startswith(f"Invalid value for '{param}': ")


@pytest.mark.parametrize("missing", ["model", "messages"])
def test_missing_required_field(missing: str) -> None:
    payload = body()
    del payload[missing]
    error = invalid(payload)
    assert error.param == missing
    assert error.message == f"Invalid value for '{missing}': Field required."


def test_max_tokens_string_is_an_error_not_coerced() -> None:
    error = invalid(body(max_tokens="5"))
    assert error.message == "Invalid value for 'max_tokens': Input should be a valid integer."


def test_wrong_content_type_names_the_content_field() -> None:
    # GIVEN a message whose content is a number
    # WHEN parsed
    error = invalid(body(messages=[{"role": "user", "content": 5}]))
    # THEN the param is the content field itself (not pydantic's union branch, e.g. "...content.str")
    assert error.param == "messages.0.content"


@pytest.mark.parametrize("value", [0, -1, -100])
def test_non_positive_max_tokens(value: int) -> None:
    error = invalid(body(max_tokens=value))
    assert error.param == "max_tokens"
    assert error.message == "Invalid value for 'max_tokens': Input should be greater than or equal to 1."


@pytest.mark.parametrize(("name", "value"), [("max_tokens", CAP + 1), ("max_completion_tokens", 10**18)])
def test_max_tokens_over_cap(name: str, value: int) -> None:
    # GIVEN a request over the relay's cap
    # WHEN parsed
    error = invalid(body(**{name: value}))
    # THEN the message says the value and the cap
    assert error.param == name
    assert error.message == f"'{name}' is {value}; this relay allows at most {CAP}."


def test_cap_is_the_callers() -> None:
    assert parse(body(max_tokens=100), cap=100).max_tokens == 100
    assert invalid(body(max_tokens=101), cap=100).param == "max_tokens"


# --- model allow-list -----------------------------------------------------------------------------------


def test_model_not_in_allow_list() -> None:
    # GIVEN a model the relay does not allow
    with pytest.raises(ModelNotAllowed) as info:
        parse(body(model="gpt-5-turbo"))
    # THEN it is a 403 naming the model
    error = info.value
    assert error.status_code == 403
    assert error.param == "model"
    assert error.code == "model_not_allowed"
    assert error.message == "The model 'gpt-5-turbo' is not allowed on this relay."


def test_model_allow_list_is_exact() -> None:
    with pytest.raises(ModelNotAllowed):
        parse(body(model="GPT-4o-mini"))


def test_allow_all_when_allow_list_is_none() -> None:
    assert parse(body(model="anything/at-all"), allowed=None).model == "anything/at-all"


def test_empty_allow_list_allows_nothing() -> None:
    with pytest.raises(ModelNotAllowed):
        parse(body(), allowed=frozenset())


def test_type_errors_are_reported_before_allow_list() -> None:
    error = invalid(body(model="not-allowed", max_tokens="5"))
    assert error.param == "max_tokens"


# --- include_usage and the upstream body ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream_options", "expected"),
    [(None, False), ({}, False), ({"include_usage": False}, False), ({"include_usage": True}, True)],
)
def test_include_usage(stream_options: dict[str, Any] | None, expected: bool) -> None:
    fields = {} if stream_options is None else {"stream_options": stream_options}
    assert parse(body(stream=True, **fields)).include_usage is expected


def test_upstream_body_always_streams_with_usage() -> None:
    # GIVEN a non-streaming request that did not ask for usage
    request = parse(body(stream=False, max_tokens=64))
    # WHEN the upstream body is built
    upstream = request.upstream_body()
    # THEN it streams and asks for usage; the client's own choice is unchanged
    assert upstream["stream"] is True
    assert upstream["stream_options"] == {"include_usage": True}
    assert upstream["max_tokens"] == 64
    assert upstream["messages"] == MESSAGES
    assert request.stream is False
    assert request.include_usage is False


def test_upstream_body_overrides_include_usage_false_and_keeps_other_stream_options() -> None:
    request = parse(body(stream=True, stream_options={"include_usage": False, "continuous_usage_stats": True}))
    assert request.upstream_body()["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


def test_unknown_fields_are_kept_and_forwarded() -> None:
    # GIVEN provider-specific and newer OpenAI fields the relay does not model
    extras = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "seed": 7,
        "user": "user-42",
        "mock": {"tokens": 5},
    }
    # WHEN parsed and forwarded
    request = parse(body(**extras))
    upstream = request.upstream_body()
    # THEN every one reaches the upstream unchanged
    for name, value in extras.items():
        assert upstream[name] == value
    # AND unknown per-message fields are forwarded too
    tool_msg = {"role": "tool", "tool_call_id": "call_A", "content": "{}"}
    assert parse(body(messages=[tool_msg])).upstream_body()["messages"] == [tool_msg]


def test_upstream_body_exact() -> None:
    request = parse(body(temperature=0.2, seed=1))
    assert request.upstream_body() == {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
        "temperature": 0.2,
        "seed": 1,
    }


@pytest.mark.parametrize("tier", ["auto", "default", "flex"])
def test_a_service_tier_billed_at_standard_rates_or_less_is_forwarded(tier: str) -> None:
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "service_tier": tier}).encode()
    assert parse_chat_request(raw, max_tokens_cap=100, allowed_models=None).upstream_body()["service_tier"] == tier


@pytest.mark.parametrize("tier", ["priority", "scale", 3, {"a": 1}, ["x"]])
def test_a_dearer_service_tier_is_refused_as_budgets_price_standard_rates(tier: object) -> None:
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "service_tier": tier}).encode()
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(raw, max_tokens_cap=100, allowed_models=None)
    assert caught.value.param == "service_tier"

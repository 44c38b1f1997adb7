"""The Bedrock upstream (no network): request translation and refusals, the signed request captured from a real
botocore client before anything is sent, and the ConverseStream decoder on real event-stream bytes."""

from __future__ import annotations

import json
from typing import Any

import anyio
import boto3.session
import pytest
from botocore.config import Config

from llm_relay.errors import InvalidRequest, UpstreamError
from llm_relay.upstreams.base import END, Failed
from llm_relay.upstreams.bedrock import BedrockDecoder, BedrockDialect, converse_params
from llm_relay_dev.eventstream import encode_event, encode_exception, encode_message

MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"


def _body(**fields: Any) -> dict[str, Any]:
    """A body as the relay forwards it (`ChatRequest.upstream_body()`): streamed, with usage, n=1."""
    body: dict[str, Any] = {
        "model": "client-name",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
    }
    body.update(fields)
    return body


# --- translation -------------------------------------------------------------------------------------------------


def test_a_plain_request_becomes_model_and_user_text() -> None:
    assert converse_params(_body(), MODEL) == {
        "modelId": MODEL,
        "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
    }


def test_every_supported_field_is_translated() -> None:
    # GIVEN a request using every field Converse can honour
    body = _body(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": " in Paris?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                    {"id": "t2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "18C"},
            {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "noon"}]},
            {"role": "user", "content": "Thanks, and tomorrow?"},
        ],
        max_tokens=100,
        temperature=0.5,
        top_p=0.9,
        stop="END",
        user="alice",
        tools=[
            {
                "type": "function",
                "function": {"name": "weather", "description": "Weather now", "parameters": {"type": "object"}},
            },
            {"type": "function", "function": {"name": "time", "strict": True}},
        ],
        tool_choice="auto",
        parallel_tool_calls=True,
    )
    # WHEN translated
    params = converse_params(body, MODEL)
    # THEN system prompts are apart, roles alternate (tool results in a user turn, merged with the next user text)
    assert params["system"] == [{"text": "Be brief."}, {"text": "Use metric units."}]
    assert params["messages"] == [
        {"role": "user", "content": [{"text": "Weather"}, {"text": " in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"city": "Paris"}}},
                {"toolUse": {"toolUseId": "t2", "name": "time", "input": {}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "t1", "content": [{"text": "18C"}]}},
                {"toolResult": {"toolUseId": "t2", "content": [{"text": "noon"}]}},
                {"text": "Thanks, and tomorrow?"},
            ],
        },
    ]
    assert params["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]}
    assert params["requestMetadata"] == {"user": "alice"}
    assert params["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "weather",
                    "description": "Weather now",
                    "inputSchema": {"json": {"type": "object"}},
                }
            },
            {
                "toolSpec": {
                    "name": "time",
                    "inputSchema": {"json": {"type": "object", "properties": {}}},
                    "strict": True,
                }
            },
        ],
        "toolChoice": {"auto": {}},
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("required", {"any": {}}), ({"type": "function", "function": {"name": "weather"}}, {"tool": {"name": "weather"}})],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "weather"}}]
    assert converse_params(_body(tools=tools, tool_choice=choice), MODEL)["toolConfig"]["toolChoice"] == expected


def test_max_completion_tokens_wins_and_a_stop_list_is_kept() -> None:
    params = converse_params(_body(max_tokens=10, max_completion_tokens=20, stop=["a", "b"]), MODEL)
    assert params["inferenceConfig"] == {"maxTokens": 20, "stopSequences": ["a", "b"]}


def test_consecutive_user_messages_merge_and_empty_text_is_left_out() -> None:
    body = _body(
        messages=[{"role": "user", "content": "a"}, {"role": "user", "content": ""}, {"role": "user", "content": "b"}]
    )
    assert converse_params(body, MODEL)["messages"] == [{"role": "user", "content": [{"text": "a"}, {"text": "b"}]}]


def test_an_echoed_openai_assistant_message_with_empty_extras_is_accepted() -> None:
    body = _body(
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "refusal": None, "annotations": []},
            {"role": "user", "content": "Again"},
        ]
    )
    assert [m["role"] for m in converse_params(body, MODEL)["messages"]] == ["user", "assistant", "user"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"1": 1}}, "logit_bias"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"seed": 1}, "seed"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"some_provider_field": 1}, "some_provider_field"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages.0.content.0.type"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "name": "bob", "content": "x"}]}, "messages.0.name"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "t", "type": "function",
          "function": {"name": "f", "arguments": "not json"}}]}]}, "messages.0.tool_calls.0.function.arguments"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools.0.type"),
        ({"tools": [{"type": "function", "function": {"name": "f", "examples": []}}]}, "tools.0.function.examples"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}, "tool_choice"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"stop": [1]}, "stop"),
    ],
)  # fmt: skip
def test_what_converse_cannot_honour_is_a_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        converse_params(_body(**fields), MODEL)
    assert refused.value.param == param
    assert refused.value.status_code == 400


def test_a_refusal_says_the_bedrock_upstream_does_not_support_it() -> None:
    with pytest.raises(InvalidRequest, match="'seed' is not supported by the Bedrock upstream"):
        converse_params(_body(seed=7), MODEL)


# --- the signed request, captured from botocore ------------------------------------------------------------------


class _Recorder:
    """Counts what botocore does around one call: requests created (signed) and responses received."""

    def __init__(self, client: Any) -> None:
        self.created = 0
        self.received: list[BaseException | None] = []
        client.meta.events.register("request-created.bedrock-runtime.ConverseStream", self._created)
        client.meta.events.register("response-received.bedrock-runtime.ConverseStream", self._received)

    def _created(self, **_: Any) -> None:
        self.created += 1

    def _received(self, exception: BaseException | None = None, **_: Any) -> None:
        self.received.append(exception)


def _client(token: str | None = "session-token", **config: Any) -> Any:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token=token, region_name="eu-west-1"
    )
    return session.client("bedrock-runtime", config=Config(**config))


def test_the_request_is_signed_by_botocore_and_captured_before_any_send() -> None:
    # GIVEN a real botocore client with static credentials (and botocore's default retries: up to 3 attempts)
    client = _client()
    recorder = _Recorder(client)
    dialect = BedrockDialect("eu-west-1", client=client)
    # WHEN the dialect builds the request (the unit tests' network guard fails any connection attempt)
    request = anyio.run(dialect.request, _body(max_tokens=5), f"us.{MODEL}", "req-123")
    # THEN the URL, body and SigV4 headers are botocore's, for the `bedrock` service
    assert (
        request.url
        == f"https://bedrock-runtime.eu-west-1.amazonaws.com/model/us.{MODEL.replace(':', '%3A')}/converse-stream"
    )
    assert json.loads(request.content) == {
        "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
        "inferenceConfig": {"maxTokens": 5},
    }
    authorization = request.headers["Authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/eu-west-1/bedrock/aws4_request" in authorization
    assert request.headers["X-Amz-Security-Token"] == "session-token"
    assert "X-Amz-Date" in request.headers and request.headers["Content-Type"] == "application/json"
    assert request.headers["x-request-id"] == "req-123"
    assert all(isinstance(v, str) for v in request.headers.values())
    # AND botocore signed one request and took the capture as its only (failed) attempt: no retry, no send
    assert recorder.created == 1
    assert len(recorder.received) == 1 and type(recorder.received[0]).__name__ == "_Captured"


def test_the_capture_is_registered_once_and_works_again() -> None:
    client = _client(token=None)
    recorder = _Recorder(client)
    dialect = BedrockDialect("eu-west-1", client=client)
    first = anyio.run(dialect.request, _body(), MODEL, "a")
    second = anyio.run(dialect.request, _body(), MODEL, "b")
    assert first.url == second.url and "X-Amz-Security-Token" not in first.headers
    assert recorder.created == 2 and len(recorder.received) == 2


def test_a_value_botocore_refuses_is_a_400_naming_its_parameter() -> None:
    dialect = BedrockDialect("eu-west-1", client=_client())
    with pytest.raises(InvalidRequest) as refused:
        anyio.run(dialect.request, _body(temperature="hot"), MODEL, "r")
    assert refused.value.param == "inferenceConfig.temperature"


def test_no_credentials_is_an_upstream_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a client whose credential chain finds nothing (no env, no files, no instance metadata)
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.session.Session(region_name="us-east-1").client("bedrock-runtime")
    dialect = BedrockDialect("us-east-1", client=client)
    with pytest.raises(UpstreamError, match="Bedrock credentials are not available to the relay"):
        anyio.run(dialect.request, _body(), MODEL, "r")


def test_the_client_is_built_once_lazily_with_one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    dialect = BedrockDialect("us-west-2", endpoint_url="http://127.0.0.1:9")
    assert dialect._client is None  # nothing built before the first request
    request = anyio.run(dialect.request, _body(), MODEL, "r")
    client = dialect._client
    assert client is not None
    assert request.url.startswith("http://127.0.0.1:9/model/")
    assert client.meta.config.retries["total_max_attempts"] == 1
    anyio.run(dialect.request, _body(), MODEL, "r2")
    assert dialect._client is client


def test_after_a_snapstart_restore_the_built_client_is_built_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a client built (with the credentials of the time) during init, which a snapshot would capture
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "before-restore")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    dialect = BedrockDialect("us-west-2", endpoint_url="http://127.0.0.1:9")
    anyio.run(dialect.request, _body(), MODEL, "r")
    snapshotted = dialect._client
    # WHEN the restore hook renews it and the environment's credentials changed
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "after-restore")
    dialect.renew()
    request = anyio.run(dialect.request, _body(), MODEL, "r2")
    # THEN the next request signs with a new client and the new credentials
    assert dialect._client is not snapshotted
    assert "Credential=after-restore/" in request.headers["Authorization"]


def test_renew_leaves_an_injected_client_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    client = boto3.session.Session(region_name="us-east-1").client("bedrock-runtime")
    dialect = BedrockDialect("us-east-1", client=client)
    dialect.renew()
    assert dialect._client is client


# --- the decoder -------------------------------------------------------------------------------------------------


def _stream(stop_reason: str = "end_turn", usage: dict[str, int] | None = None) -> bytes:
    events = [
        encode_event("messageStart", {"role": "assistant"}),
        encode_event("contentBlockDelta", {"delta": {"text": "Hel"}, "contentBlockIndex": 0}),
        encode_event("contentBlockDelta", {"delta": {"text": "lo"}, "contentBlockIndex": 0}),
        encode_event("contentBlockStop", {"contentBlockIndex": 0}),
        encode_event("messageStop", {"stopReason": stop_reason}),
        encode_event("metadata", {"usage": usage or {"inputTokens": 7, "outputTokens": 2, "totalTokens": 9}}),
    ]
    return b"".join(events)


def _decode(raw: bytes) -> list[Any]:
    decoder = BedrockDecoder("m", 1700)
    return decoder.feed(raw) + decoder.close()


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "", "object": "chat.completion.chunk", "created": 1700, "model": "m", "choices": [choice]}


def test_a_stream_decodes_to_openai_chunks_a_finish_usage_and_end() -> None:
    assert _decode(_stream()) == [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk({}, "stop"),
        {
            "id": "",
            "object": "chat.completion.chunk",
            "created": 1700,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
        },
        END,
    ]


def test_any_split_of_the_body_decodes_the_same() -> None:
    raw = _stream()
    whole = _decode(raw)
    for cut in range(1, len(raw)):
        decoder = BedrockDecoder("m", 1700)
        assert decoder.feed(raw[:cut]) + decoder.feed(raw[cut:]) + decoder.close() == whole, cut
    decoder = BedrockDecoder("m", 1700)
    assert [item for i in range(len(raw)) for item in decoder.feed(raw[i : i + 1])] == whole


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("malformed_model_output", "stop"),
        ("something_new", "stop"),
    ],
)
def test_each_stop_reason_maps_to_a_finish_reason(stop_reason: str, finish: str) -> None:
    decoded = _decode(_stream(stop_reason))
    assert decoded[3] == _chunk({}, finish)


def test_cache_reads_and_writes_count_in_the_prompt() -> None:
    usage = {"inputTokens": 5, "outputTokens": 2, "totalTokens": 307, "cacheReadInputTokens": 200,
             "cacheWriteInputTokens": 100}  # fmt: skip
    assert _decode(_stream(usage=usage))[4]["usage"] == {
        "prompt_tokens": 305,
        "completion_tokens": 2,
        "total_tokens": 307,
        "prompt_tokens_details": {"cached_tokens": 200},
    }


def test_tool_use_and_reasoning_deltas() -> None:
    signed = {"signature": "sig"}  # a reasoning signature: nothing for a chunk
    raw = b"".join(
        [
            encode_event("messageStart", {"role": "assistant"}),
            encode_event("contentBlockDelta", {"delta": {"reasoningContent": {"text": "hmm"}}, "contentBlockIndex": 0}),
            encode_event("contentBlockDelta", {"delta": {"reasoningContent": signed}, "contentBlockIndex": 0}),
            encode_event("contentBlockStart", {"start": {"toolUse": {"toolUseId": "tu1", "name": "weather"}},
                                               "contentBlockIndex": 1}),
            encode_event("contentBlockDelta", {"delta": {"toolUse": {"input": '{"city":'}}, "contentBlockIndex": 1}),
            encode_event("contentBlockDelta", {"delta": {"toolUse": {"input": '"Paris"}'}}, "contentBlockIndex": 1}),
            encode_event("contentBlockStart", {"start": {"toolUse": {"toolUseId": "tu2", "name": "time"}},
                                               "contentBlockIndex": 2}),
            encode_event("contentBlockDelta", {"delta": {"toolUse": {"input": "{}"}}, "contentBlockIndex": 2}),
            encode_event("messageStop", {"stopReason": "tool_use"}),
            encode_event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}}),
        ]
    )  # fmt: skip
    decoded = _decode(raw)
    call = {"type": "function"}
    assert decoded[1:8] == [
        _chunk({"reasoning_content": "hmm"}),
        _chunk({"tool_calls": [{"index": 0, "id": "tu1", **call, "function": {"name": "weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "tu2", **call, "function": {"name": "time", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        _chunk({}, "tool_calls"),
    ]
    assert decoded[-1] is END


@pytest.mark.parametrize(
    "kind", ["modelStreamErrorException", "throttlingException", "internalServerException", "validationException"]
)
def test_an_exception_event_fails_the_stream_and_nothing_follows(kind: str) -> None:
    raw = encode_event("messageStart", {"role": "assistant"}) + encode_exception(kind, "it broke") + _stream()
    assert _decode(raw) == [_chunk({"role": "assistant", "content": ""}), Failed(f"Upstream error: {kind}: it broke")]


def test_an_error_message_fails_the_stream() -> None:
    raw = encode_message({":message-type": "error", ":error-code": "InternalFailure", ":error-message": "oops"}, b"")
    assert _decode(raw) == [Failed("Upstream error: InternalFailure: oops")]


def test_a_corrupted_crc_is_a_malformed_event_and_the_end() -> None:
    raw = bytearray(_stream())
    first = len(encode_event("messageStart", {"role": "assistant"}))
    raw[first + 20] ^= 0xFF  # inside the second message
    decoder = BedrockDecoder("m", 1700)
    assert decoder.feed(bytes(raw)) == [
        _chunk({"role": "assistant", "content": ""}),
        Failed("Upstream sent a malformed event."),
    ]
    assert decoder.feed(_stream()) == [] and decoder.close() == []


def test_a_payload_that_is_not_json_is_malformed() -> None:
    raw = encode_message({":message-type": "event", ":event-type": "contentBlockDelta"}, b"{not json")
    assert _decode(raw) == [Failed("Upstream sent a malformed event.")]


def test_metadata_without_a_message_stop_fails() -> None:
    raw = encode_event("messageStart", {"role": "assistant"}) + encode_event("metadata", {"usage": {}})
    assert _decode(raw)[-1] == Failed("Upstream sent its metadata before the message stopped.")


def test_a_stream_cut_before_message_stop_has_no_finish_and_no_end() -> None:
    raw = _stream()
    cut = raw.index(encode_event("messageStop", {"stopReason": "end_turn"}))
    decoded = _decode(raw[:cut] + raw[cut : cut + 10])  # and half a message after the last whole one
    assert all(isinstance(item, dict) and item["choices"][0]["finish_reason"] is None for item in decoded)
    assert END not in decoded and len(decoded) == 3


def test_a_stream_cut_after_message_stop_has_no_finish_either() -> None:
    raw = _stream()
    cut = raw.index(encode_event("metadata", {"usage": {"inputTokens": 7, "outputTokens": 2, "totalTokens": 9}}))
    decoded = _decode(raw[:cut])
    assert not any(
        isinstance(item, dict) and item["choices"] and item["choices"][0]["finish_reason"] for item in decoded
    )
    assert END not in decoded


def test_dialect_kind_and_decoder() -> None:
    dialect = BedrockDialect(None, client=object())
    assert dialect.kind == "bedrock"
    assert isinstance(dialect.decoder("m", 1), BedrockDecoder)


def test_the_client_is_built_at_start_up_and_a_missing_region_refuses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN no region anywhere (no AWS_REGION, no config file)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    # WHEN a dialect without a region starts THEN it is refused, naming the fix
    with pytest.raises(ValueError, match="no region"):
        BedrockDialect(None).start()
    # AND with a region its client exists before the first request (the cost is init's, a snapshot keeps it)
    dialect = BedrockDialect("eu-west-1")
    dialect.start()
    assert dialect._client is not None and dialect._client.meta.region_name == "eu-west-1"


def test_a_boto3_without_converse_stream_refuses_the_start() -> None:
    # GIVEN a bedrock-runtime client from a boto3 older than ConverseStream (a stale Lambda runtime SDK)
    from types import SimpleNamespace

    old = SimpleNamespace(meta=SimpleNamespace(events=SimpleNamespace(register=lambda *args, **kwargs: None)))
    # THEN the start is refused, saying which boto3 has it, instead of every request failing
    with pytest.raises(ValueError, match="bedrock-runtime client has no ConverseStream"):
        BedrockDialect("us-east-1", client=old).start()

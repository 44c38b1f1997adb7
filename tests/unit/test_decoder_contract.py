"""Every decoder keeps its contract (`upstreams.base`) on whatever an upstream sends: chunks, `END` or `Failed`,
never an exception, for payloads whose fields have unexpected types and for nesting deeper than the JSON parser
goes. (An exception escaping a decoder would end a stream as a relay failure instead of an upstream error.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from llm_relay.upstreams.base import Decoder, Ended, Failed
from llm_relay.upstreams.bedrock_events import BedrockDecoder
from llm_relay.upstreams.ndjson import NDJSONDecoder, OllamaDecoder
from llm_relay.upstreams.openai import OpenAIDecoder
from llm_relay_dev.eventstream import encode_event

VALUES: list[Any] = [None, 1, "x", [], {}, [1], {"a": 1}, True, -5, 1.5]
DEEP = "[" * 5000 + "]" * 5000


def _line_shapes(v: Any) -> list[dict[str, Any]]:
    return [
        {"message": v},
        {"message": {"content": v}},
        {"message": {"tool_calls": v}},
        {"message": {"tool_calls": [v]}},
        {"done": True, "done_reason": v, "eval_count": v},
        {"error": v},
        {"choices": v},
        {"choices": [{"delta": v}]},
        {"termination_reason": "stop", "usage": v},
        {"termination_reason": "stop", "usage": {"prompt_tokens": v}},
    ]


def _kept(items: list[Any]) -> None:
    assert all(isinstance(item, dict | Ended | Failed) for item in items)


@pytest.mark.parametrize("value", VALUES)
def test_the_openai_decoder_never_raises(value: Any) -> None:
    for obj in ({"choices": value}, {"choices": [value]}, {"choices": [{"delta": value}]}, {"error": value}):
        _kept(OpenAIDecoder().feed(f"data: {json.dumps(obj)}\n\n".encode()))


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("make", [lambda: OllamaDecoder("m", 1), lambda: NDJSONDecoder("m", 1)])
def test_the_ndjson_decoders_never_raise(make: Callable[[], Decoder], value: Any) -> None:
    for obj in _line_shapes(value):
        _kept(make().feed((json.dumps(obj) + "\n").encode()))


@pytest.mark.parametrize("value", VALUES)
def test_the_bedrock_decoder_never_raises(value: Any) -> None:
    events = [
        ("contentBlockDelta", {"delta": value}),
        ("contentBlockDelta", {"delta": {"toolUse": value}}),
        ("contentBlockDelta", {"delta": {"toolUse": {"input": value}}, "contentBlockIndex": value}),
        ("contentBlockStart", {"start": value}),
        ("contentBlockStart", {"start": {"toolUse": value}, "contentBlockIndex": value}),
        ("messageStop", {"stopReason": value}),
        ("metadata", {"usage": value}),
        ("metadata", {"usage": {"inputTokens": value}}),
    ]
    for name, payload in events:
        decoder = BedrockDecoder("m", 1)
        if name == "metadata":
            decoder.feed(encode_event("messageStop", {"stopReason": "end_turn"}))
        _kept(decoder.feed(encode_event(name, payload)))


@pytest.mark.parametrize(
    ("decoder", "framed"),
    [
        (OpenAIDecoder(), f"data: {DEEP}\n\n"),
        (OllamaDecoder("m", 1), f"{DEEP}\n"),
        (NDJSONDecoder("m", 1), f"{DEEP}\n"),
    ],
)
def test_nesting_deeper_than_the_parser_goes_is_a_malformed_event(decoder: Decoder, framed: str) -> None:
    [failed] = decoder.feed(framed.encode())
    assert isinstance(failed, Failed) and "malformed" in failed.message

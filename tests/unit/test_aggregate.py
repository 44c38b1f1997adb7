"""CompletionAggregator: streamed chunks assembled into one chat.completion."""

from __future__ import annotations

from typing import Any

from llm_relay.aggregate import CompletionAggregator

USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def chunk(delta: dict[str, Any], finish_reason: str | None = None, index: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": 1718000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }


def aggregate(chunks: list[dict[str, Any]]) -> CompletionAggregator:
    aggregator = CompletionAggregator()
    for c in chunks:
        aggregator.add(c)
    return aggregator


def test_content_is_assembled_into_one_completion() -> None:
    # GIVEN a typical text stream: role chunk, content deltas, finish chunk, usage-only chunk
    aggregator = aggregate(
        [
            chunk({"role": "assistant", "content": "", "refusal": None}),
            chunk({"content": "Hello"}),
            chunk({"content": ", "}),
            chunk({"content": "wörld 🚀"}),
            chunk({}, "stop"),
            {
                "id": "chatcmpl-upstream",
                "object": "chat.completion.chunk",
                "created": 1718000000,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [],
                "usage": USAGE,
            },
        ]
    )
    # WHEN the completion is built
    body = aggregator.completion("req_123", "gpt-4o-mini", USAGE, created=1800000000)
    # THEN it is an OpenAI chat.completion with the relay's id and the upstream's model and time
    assert body == {
        "id": "req_123",
        "object": "chat.completion",
        "created": 1718000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello, wörld 🚀", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
        "system_fingerprint": "fp_44709d6fcb",
    }


def test_tool_call_arguments_are_assembled_across_deltas() -> None:
    # GIVEN two parallel tool calls whose id, type and name come once and arguments in pieces
    aggregator = aggregate(
        [
            chunk({"role": "assistant", "content": None}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_A",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_B",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": '{"tz":'},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 1, "function": {"arguments": ' "CET"}'}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    # WHEN the completion is built
    message = aggregator.completion("req_1", "gpt-4o", None, created=1)["choices"][0]["message"]
    # THEN each call is whole, in index order, and content is null
    assert message == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {"id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_B", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
        ],
    }


def test_tool_calls_arriving_out_of_index_order_are_sorted() -> None:
    aggregator = aggregate(
        [
            chunk(
                {
                    "tool_calls": [
                        {"index": 1, "id": "call_B", "type": "function", "function": {"name": "b", "arguments": "{}"}}
                    ]
                }
            ),
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "call_A", "type": "function", "function": {"name": "a", "arguments": "{}"}}
                    ]
                }
            ),
        ]
    )
    calls = aggregator.completion("r", "m", None, created=1)["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_A", "call_B"]


def test_content_and_tool_calls_together() -> None:
    aggregator = aggregate(
        [
            chunk({"content": "Let me check."}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_A",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({}, "tool_calls"),
        ]
    )
    choice = aggregator.completion("r", "m", None, created=1)["choices"][0]
    assert choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": "{}"}
    assert choice["finish_reason"] == "tool_calls"


def test_multiple_choices_are_kept_apart_and_ordered() -> None:
    # GIVEN an n=2 stream with interleaved choices, choice 1 first
    aggregator = aggregate(
        [
            chunk({"role": "assistant", "content": ""}, index=1),
            chunk({"role": "assistant", "content": ""}, index=0),
            chunk({"content": "Bon"}, index=1),
            chunk({"content": "Hel"}, index=0),
            chunk({"content": "jour"}, index=1),
            chunk({"content": "lo"}, index=0),
            chunk({}, "stop", index=0),
            chunk({}, "length", index=1),
        ]
    )
    # WHEN the completion is built
    choices = aggregator.completion("r", "m", None, created=1)["choices"]
    # THEN each choice has its own text and finish_reason, in index order
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "Hello", "stop"),
        (1, "Bonjour", "length"),
    ]


def test_refusal_is_assembled() -> None:
    aggregator = aggregate(
        [
            chunk({"role": "assistant", "content": None, "refusal": ""}),
            chunk({"refusal": "I'm sorry, "}),
            chunk({"refusal": "I can't help with that."}),
            chunk({}, "stop"),
        ]
    )
    message = aggregator.completion("r", "m", None, created=1)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "refusal": "I'm sorry, I can't help with that."}


def test_finish_reason_is_none_when_stream_never_finished() -> None:
    aggregator = aggregate([chunk({"content": "partial"})])
    choice = aggregator.completion("r", "m", None, created=1)["choices"][0]
    assert choice["finish_reason"] is None
    assert choice["message"]["content"] == "partial"


def test_fallbacks_when_chunks_carry_no_metadata() -> None:
    # GIVEN chunks without model, created or system_fingerprint
    aggregator = CompletionAggregator()
    aggregator.add({"choices": [{"delta": {"content": "x"}, "finish_reason": "stop"}]})
    # WHEN the completion is built
    body = aggregator.completion("req_9", "requested-model", USAGE, created=1700000123)
    # THEN the caller's model and time are used, the index defaults to 0, no fingerprint key
    assert body["model"] == "requested-model"
    assert body["created"] == 1700000123
    assert body["choices"][0]["index"] == 0
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert "system_fingerprint" not in body


def test_first_metadata_wins() -> None:
    aggregator = aggregate([chunk({"content": "a"})])
    later = chunk({"content": "b"})
    later.update(model="other", created=1, system_fingerprint="fp_other")
    aggregator.add(later)
    body = aggregator.completion("r", "m", None, created=2)
    assert (body["model"], body["created"], body["system_fingerprint"]) == (
        "gpt-4o-mini-2024-07-18",
        1718000000,
        "fp_44709d6fcb",
    )


def test_no_choices_gives_empty_list() -> None:
    aggregator = aggregate([{"choices": [], "usage": USAGE}])
    body = aggregator.completion("r", "m", USAGE, created=5)
    assert body["choices"] == []
    assert body["usage"] == USAGE


def test_non_dict_choices_are_ignored() -> None:
    aggregator = CompletionAggregator()
    aggregator.add({"choices": ["junk", None, {"index": 0, "delta": {"content": "ok"}}]})
    assert aggregator.completion("r", "m", None, created=1)["choices"][0]["message"]["content"] == "ok"


def test_legacy_function_call_is_assembled() -> None:
    # GIVEN a stream answering a legacy `functions` request (finish_reason function_call)
    aggregator = aggregate(
        [
            chunk({"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": ""}}),
            chunk({"function_call": {"arguments": '{"city":'}}),
            chunk({"function_call": {"arguments": '"Paris"}'}}),
            chunk({}, "function_call"),
        ]
    )
    # WHEN the completion is built
    message = aggregator.completion("r", "m", None, created=1)["choices"][0]["message"]
    # THEN the function call the model produced is in the message, not dropped
    assert message.get("function_call") == {"name": "get_weather", "arguments": '{"city":"Paris"}'}

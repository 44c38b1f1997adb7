"""StreamMeter, Usage and estimate_prompt_tokens: chunk metering with explicit times."""

from __future__ import annotations

from typing import Any

import pytest

from llm_relay.metering import StreamMeter, Usage, delta_tokens, estimate_prompt_tokens


def chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None, index: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-9xKq2",
        "object": "chat.completion.chunk",
        "created": 1718000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }


def usage_chunk(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached, "audio_tokens": 0}
    return {
        "id": "chatcmpl-9xKq2",
        "object": "chat.completion.chunk",
        "created": 1718000000,
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": usage,
    }


ROLE = chunk({"role": "assistant", "content": "", "refusal": None})
MESSAGES = [{"role": "user", "content": "a" * 40}]  # 40 // 4 + 3 = 13 estimated prompt tokens


def test_ttft_and_tpot_from_content_chunks() -> None:
    # GIVEN a stream that started at t=100 and whose first content arrives at 100.5
    meter = StreamMeter(started_at=100.0)
    meter.observe(ROLE, 100.25)
    # WHEN five content chunks arrive between 100.5 and 102.5, then the finish chunk
    for i, now in enumerate((100.5, 101.0, 101.5, 102.0, 102.5)):
        assert meter.observe(chunk({"content": f"t{i}"}), now) is True
    meter.observe(chunk({}, "stop"), 103.0)
    # THEN TTFT is from start to the first content, TPOT the mean gap over the four later tokens
    assert meter.ttft_s == 0.5
    assert meter.tpot_s == 0.5  # (102.5 - 100.5) / (5 - 1)
    assert meter.first_token_at == 100.5
    assert meter.last_token_at == 102.5
    assert meter.chunks == 7
    assert meter.content_chunks == 5
    assert meter.completion_tokens == 5
    assert meter.finish_reason == "stop"


def test_tpot_uses_upstream_completion_tokens_when_reported() -> None:
    # GIVEN content from 10.0 to 12.0 and an upstream usage report of 9 completion tokens
    meter = StreamMeter(started_at=9.0)
    meter.observe(chunk({"content": "Hello"}), 10.0)
    meter.observe(chunk({"content": " world"}), 12.0)
    meter.observe(chunk({}, "stop"), 12.5)
    meter.observe(usage_chunk(20, 9), 12.5)
    # THEN TPOT divides by the reported tokens minus the first
    assert meter.completion_tokens == 9
    assert meter.tpot_s == 0.25  # 2.0 / 8
    assert meter.ttft_s == 1.0


def test_role_only_first_chunk_is_not_a_token() -> None:
    # GIVEN only the role chunk (empty content, null refusal)
    meter = StreamMeter(started_at=0.0)
    # WHEN it is observed
    assert meter.observe(ROLE, 0.5) is True
    # THEN no token has arrived
    assert meter.chunks == 1
    assert meter.content_chunks == 0
    assert meter.first_token_at is None
    assert meter.ttft_s is None
    assert meter.tpot_s is None


def test_single_token_has_ttft_but_no_tpot() -> None:
    meter = StreamMeter(started_at=1.0)
    meter.observe(chunk({"content": "Hi"}), 1.75)
    assert meter.ttft_s == 0.75
    assert meter.tpot_s is None


def test_no_tpot_when_upstream_reports_one_completion_token() -> None:
    meter = StreamMeter(started_at=0.0)
    meter.observe(chunk({"content": "a"}), 1.0)
    meter.observe(chunk({"content": "b"}), 2.0)
    meter.observe(usage_chunk(5, 1), 2.0)
    assert meter.tpot_s is None


def test_tool_call_deltas_count_as_tokens() -> None:
    # GIVEN a tool call streamed as a header delta and two argument deltas
    meter = StreamMeter(started_at=0.0)
    meter.observe(chunk({"role": "assistant", "content": None}), 0.25)
    meter.observe(
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        0.5,
    )
    meter.observe(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}), 0.75)
    meter.observe(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}), 1.0)
    meter.observe(chunk({}, "tool_calls"), 1.25)
    # THEN every tool_calls delta counts, and the first sets TTFT
    assert meter.content_chunks == 3
    assert meter.ttft_s == 0.5
    assert meter.last_token_at == 1.0
    assert meter.finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "delta",
    [
        {"refusal": "I can't help with that."},
        {"function_call": {"name": "f", "arguments": ""}},
        {"reasoning_content": "Let me think"},
        {"content": " "},
    ],
    ids=["refusal", "function_call", "reasoning_content", "whitespace"],
)
def test_other_output_deltas_count_as_tokens(delta: dict[str, Any]) -> None:
    meter = StreamMeter(started_at=0.0)
    meter.observe(chunk(delta), 0.5)
    assert meter.content_chunks == 1
    assert meter.first_token_at == 0.5


def test_non_stream_message_shape_counts() -> None:
    # GIVEN a choice carrying `message` instead of `delta`
    meter = StreamMeter(started_at=0.0)
    meter.observe(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}]}, 0.5
    )
    assert meter.content_chunks == 1
    assert meter.finish_reason == "stop"


def test_usage_chunk_is_parsed_with_cached_tokens() -> None:
    # GIVEN the final usage-only chunk with cached prompt tokens
    meter = StreamMeter(started_at=0.0)
    # WHEN it is observed
    assert meter.observe(usage_chunk(1200, 35, cached=1024), 2.0) is True
    # THEN the upstream usage is recorded exactly, and it is not a token
    assert meter.upstream_usage == Usage(prompt_tokens=1200, completion_tokens=35, cached_tokens=1024)
    assert meter.content_chunks == 0
    assert meter.first_token_at is None
    assert meter.chunks == 1


def test_usage_without_details_has_no_cached_tokens() -> None:
    meter = StreamMeter(started_at=0.0)
    meter.observe(usage_chunk(10, 4), 1.0)
    assert meter.upstream_usage == Usage(10, 4, cached_tokens=0, estimated=False)


@pytest.mark.parametrize(
    "raw",
    [
        {"prompt_tokens": -3, "completion_tokens": "7", "prompt_tokens_details": {"cached_tokens": None}},
        {"prompt_tokens": 1.5, "completion_tokens": None, "prompt_tokens_details": "oops"},
    ],
)
def test_garbage_usage_numbers_become_zero(raw: dict[str, Any]) -> None:
    meter = StreamMeter(started_at=0.0)
    meter.observe({"choices": [], "usage": raw}, 1.0)
    assert meter.upstream_usage == Usage(0, 0, 0)


def test_usage_on_a_chunk_with_choices_is_recorded() -> None:
    # GIVEN a provider that puts usage on the finish chunk itself
    meter = StreamMeter(started_at=0.0)
    final = chunk({}, "stop")
    final["usage"] = {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}
    assert meter.observe(final, 1.0) is True
    assert meter.upstream_usage == Usage(8, 3)
    assert meter.finish_reason == "stop"


def test_null_usage_on_content_chunks_is_ignored() -> None:
    meter = StreamMeter(started_at=0.0)
    meter.observe(chunk({"content": "x"}), 1.0)
    assert meter.upstream_usage is None


def test_second_usage_only_chunk_is_a_duplicate() -> None:
    # GIVEN a stream whose usage chunk has arrived
    meter = StreamMeter(started_at=0.0)
    meter.observe(chunk({"content": "x"}), 1.0)
    meter.observe(chunk({}, "stop"), 1.5)
    assert meter.observe(usage_chunk(10, 1), 2.0) is True
    # WHEN a second usage-only chunk arrives (with different numbers)
    duplicate = meter.observe(usage_chunk(99, 99), 2.5)
    # THEN it is refused, not counted, and the first report stands
    assert duplicate is False
    assert meter.upstream_usage == Usage(10, 1)
    assert meter.chunks == 3


def test_second_finish_chunk_with_empty_delta_is_a_duplicate() -> None:
    # GIVEN a stream that has finished
    meter = StreamMeter(started_at=0.0)
    meter.observe(chunk({"content": "x"}), 1.0)
    assert meter.observe(chunk({}, "stop"), 1.5) is True
    # WHEN the finish chunk is repeated (with another reason)
    duplicate = meter.observe(chunk({}, "length"), 2.0)
    # THEN it is refused and the first finish_reason stands
    assert duplicate is False
    assert meter.finish_reason == "stop"


def test_finish_chunk_with_content_after_finish_is_not_a_duplicate() -> None:
    meter = StreamMeter(started_at=0.0)
    meter.observe(chunk({}, "stop"), 1.0)
    assert meter.observe(chunk({"content": "tail"}, "length"), 2.0) is True
    assert meter.finish_reason == "length"


def test_estimated_usage_when_upstream_never_reported() -> None:
    # GIVEN three content chunks and no usage chunk (e.g. a cancelled stream)
    meter = StreamMeter(started_at=0.0)
    meter.observe(ROLE, 0.1)
    for now in (0.2, 0.3, 0.4):
        meter.observe(chunk({"content": "tok"}), now)
    # WHEN usage is asked for
    usage = meter.usage(estimate_prompt_tokens(MESSAGES))
    # THEN it is estimated: prompt from the messages, one token per content chunk
    assert usage == Usage(prompt_tokens=13, completion_tokens=3, cached_tokens=0, estimated=True)
    assert usage.total_tokens == 16


def test_upstream_usage_wins_over_estimate() -> None:
    meter = StreamMeter(started_at=0.0)
    meter.observe(chunk({"content": "tok"}), 0.2)
    meter.observe(usage_chunk(50, 2, cached=10), 0.3)
    assert meter.usage(estimate_prompt_tokens(MESSAGES)) == Usage(50, 2, cached_tokens=10, estimated=False)


def test_multiple_choices_in_one_chunk_each_count() -> None:
    # GIVEN a chunk carrying content for two choices
    meter = StreamMeter(started_at=0.0)
    both = {
        "choices": [
            {"index": 0, "delta": {"content": "A"}, "finish_reason": None},
            {"index": 1, "delta": {"content": "B"}, "finish_reason": None},
        ]
    }
    # WHEN observed
    assert meter.observe(both, 1.0) is True
    # THEN each choice's delta counts
    assert meter.content_chunks == 2
    assert meter.chunks == 1


def test_each_choice_finishing_in_its_own_chunk_is_not_a_duplicate() -> None:
    # GIVEN an n=2 stream, as OpenAI sends it: one choice per chunk, each with its own finish chunk
    meter = StreamMeter(started_at=0.0)
    meter.observe(chunk({"role": "assistant", "content": ""}, index=0), 0.1)
    meter.observe(chunk({"role": "assistant", "content": ""}, index=1), 0.1)
    meter.observe(chunk({"content": "Yes"}, index=0), 0.5)
    meter.observe(chunk({"content": "No"}, index=1), 0.6)
    assert meter.observe(chunk({}, "stop", index=0), 0.7) is True
    # WHEN choice 1 finishes in the next chunk (empty delta, as always)
    second = meter.observe(chunk({}, "length", index=1), 0.8)
    # THEN it is relayed: it is choice 1's only finish, not a repeat of choice 0's
    assert second is True
    assert meter.content_chunks == 2


def test_non_dict_choice_is_skipped() -> None:
    meter = StreamMeter(started_at=0.0)
    assert meter.observe({"choices": ["junk", {"index": 0, "delta": {"content": "x"}}]}, 1.0) is True
    assert meter.content_chunks == 1


# --- Usage -----------------------------------------------------------------------------------------


def test_usage_as_openai_without_cached_tokens() -> None:
    assert Usage(12, 7).as_openai() == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def test_usage_as_openai_with_cached_tokens() -> None:
    assert Usage(1200, 35, cached_tokens=1024).as_openai() == {
        "prompt_tokens": 1200,
        "completion_tokens": 35,
        "total_tokens": 1235,
        "prompt_tokens_details": {"cached_tokens": 1024},
    }


# --- estimate_prompt_tokens ------------------------------------------------------------------------


def test_estimate_counts_characters_and_framing() -> None:
    messages = [{"role": "system", "content": "s" * 20}, {"role": "user", "content": "u" * 21}]
    assert estimate_prompt_tokens(messages) == 41 // 4 + 3 * 2  # 16


def test_estimate_counts_text_parts_of_list_content() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "t" * 12},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                "not a part",
            ],
        }
    ]
    assert estimate_prompt_tokens(messages) == 12 // 4 + 3  # 6


def test_estimate_of_message_without_content_is_framing_only() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
        {"role": "tool"},
    ]
    assert estimate_prompt_tokens(messages) == 6


def test_estimate_is_at_least_one() -> None:
    assert estimate_prompt_tokens([]) == 1


def test_without_upstream_usage_a_long_delta_is_estimated_by_its_text() -> None:
    # GIVEN a stream with no usage report: a one-word chunk, a long delta and a CJK delta
    meter = StreamMeter(started_at=0.0)
    for text in ("Hi", "x" * 40, "今天天气很好"):
        meter.observe({"choices": [{"index": 0, "delta": {"content": text}}]}, 1.0)
    # THEN the estimate counts the text (1 + 10 + 6), not the chunks (3)
    usage = meter.usage(estimate_prompt_tokens([{"role": "user", "content": "q"}]))
    assert (meter.content_chunks, usage.completion_tokens, usage.estimated) == (3, 17, True)


@pytest.mark.parametrize("reported", [{"completion_tokens": 4}, {"prompt_tokens": None, "completion_tokens": 4}])
def test_a_usage_report_without_a_prompt_count_has_its_prompt_estimated(reported: dict[str, Any]) -> None:
    # GIVEN an upstream whose usage counts the output only (a generic NDJSON server)
    meter = StreamMeter(started_at=0.0)
    meter.observe(chunk({"content": "Hi"}), 0.1)
    meter.observe({"choices": [], "usage": reported}, 0.2)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    # THEN the output count is the upstream's, the prompt is estimated as for any missing count, and the usage says
    # it is estimated (never a prompt billed as 0)
    usage = meter.usage(estimate_prompt_tokens(messages))
    assert (usage.prompt_tokens, usage.completion_tokens) == (estimate_prompt_tokens(messages), 4)
    assert usage.prompt_tokens > 0 and usage.source == "estimated"


@pytest.mark.parametrize("text", ["", "a", "abcd", "hello world, ", "Héllo wörld", "日本語", "🚀 go", " " * 9])
def test_a_text_only_delta_counts_as_any_delta_with_that_text(text: str) -> None:
    # GIVEN a delta of text alone (with and without its role), counted on the short path, and the same text in
    # deltas that take the general one (an unknown field, a tool call with no text)
    plain: list[dict[str, Any]] = [{"content": text}, {"role": "assistant", "content": text}]
    general: list[dict[str, Any]] = [{"content": text, "x": 1}, {"content": text, "tool_calls": []}]
    # WHEN each is counted
    counts = {delta_tokens(delta) for delta in plain + general}
    # THEN all agree: no text is no token, else a token per four ASCII characters and one per other character
    ascii_chars = sum(c.isascii() for c in text)
    assert counts == {max(1, ascii_chars // 4 + len(text) - ascii_chars) if text else 0}

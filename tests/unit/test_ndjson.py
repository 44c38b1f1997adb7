"""The NDJSON decoders (Ollama's lines, configured fields) and the generic dialect's request."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from llm_relay.upstreams.base import END, Decoded, Decoder, Failed
from llm_relay.upstreams.ndjson import MALFORMED, FieldPaths, NDJSONDecoder, NDJSONDialect, OllamaDecoder
from llm_relay.upstreams.ndjson_lines import MAX_LINE_BYTES


def _lines(*objs: Any) -> bytes:
    return b"".join((o if isinstance(o, str) else json.dumps(o)).encode() + b"\n" for o in objs)


def _run(decoder: Decoder, raw: bytes, *, split: int = 0) -> list[Decoded]:
    """Feed `raw` whole, or in pieces of `split` bytes; then close."""
    pieces = [raw[i : i + split] for i in range(0, len(raw), split)] if split else [raw]
    out: list[Decoded] = []
    for piece in pieces:
        out += decoder.feed(piece)
    return out + decoder.close()


def _deltas(items: list[Decoded]) -> list[dict[str, Any]]:
    return [
        i["choices"][0]["delta"] for i in items if isinstance(i, dict) and i["choices"] and i["choices"][0]["delta"]
    ]


def _finish(items: list[Decoded]) -> list[str]:
    return [
        i["choices"][0]["finish_reason"]
        for i in items
        if isinstance(i, dict) and i["choices"] and i["choices"][0]["finish_reason"]
    ]


def _usage(items: list[Decoded]) -> list[dict[str, int]]:
    return [i["usage"] for i in items if isinstance(i, dict) and "usage" in i]


def _ollama(content: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "model": "llama3.2",
        "created_at": "2025-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": content, **extra},
        "done": False,
    }


def _ollama_done(reason: str = "stop", **counts: Any) -> dict[str, Any]:
    line = {**_ollama(), "done": True, "done_reason": reason, "total_duration": 1000}
    return {**line, **(counts or {"prompt_eval_count": 26, "eval_count": 3})}


OLLAMA_TEXT = _lines(_ollama("Hé"), _ollama("llo 🚀"), _ollama("!"), _ollama_done())


@pytest.mark.parametrize("split", [0, 1, 7])
def test_ollama_text_stream(split: int) -> None:
    # GIVEN Ollama's lines, whole or in small pieces WHEN decoded
    items = _run(OllamaDecoder("route-model", 1700000000), OLLAMA_TEXT, split=split)
    # THEN content chunks in the relay's shape (the first with the role), the finish, the usage, the end
    assert items[0] == {
        "id": "",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "route-model",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hé"}, "finish_reason": None}],
    }
    assert _deltas(items) == [{"role": "assistant", "content": "Hé"}, {"content": "llo 🚀"}, {"content": "!"}]
    assert _finish(items) == ["stop"]
    assert items[-2] == {
        "id": "",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "route-model",
        "choices": [],
        "usage": {"prompt_tokens": 26, "completion_tokens": 3, "total_tokens": 29},
    }
    assert items[-1] is END


@pytest.mark.parametrize(
    ("reason", "finish"), [("stop", "stop"), ("length", "length"), ("load", "stop"), ("unload", "stop")]
)
def test_ollama_done_reasons(reason: str, finish: str) -> None:
    assert _finish(_run(OllamaDecoder("m", 0), _lines(_ollama("a"), _ollama_done(reason)))) == [finish]


def test_ollama_tool_calls() -> None:
    # GIVEN two tool calls (arguments as objects; one with Ollama's own id), then done_reason stop
    calls = [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]
    more = [{"id": "call_abc", "function": {"index": 1, "name": "time", "arguments": {}}}]
    raw = _lines(_ollama("", tool_calls=calls), _ollama("", tool_calls=more), _ollama_done("stop"))
    # WHEN decoded
    items = _run(OllamaDecoder("m", 0), raw)
    # THEN OpenAI tool call deltas with indexes and ids, arguments as JSON strings, and finish tool_calls
    assert _deltas(items) == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {
            "tool_calls": [
                {"index": 1, "id": "call_abc", "type": "function", "function": {"name": "time", "arguments": "{}"}}
            ]
        },
    ]
    assert _finish(items) == ["tool_calls"]


def test_ollama_thinking_is_reasoning_content() -> None:
    items = _run(OllamaDecoder("m", 0), _lines(_ollama("", thinking="Hmm."), _ollama("Yes"), _ollama_done()))
    assert _deltas(items) == [{"role": "assistant", "reasoning_content": "Hmm.", "content": ""}, {"content": "Yes"}]


def test_ollama_content_on_the_done_line_comes_before_the_finish() -> None:
    done = {**_ollama_done(), "message": {"role": "assistant", "content": "end"}}
    items = _run(OllamaDecoder("m", 0), _lines(_ollama("a"), done))
    assert _deltas(items)[-1] == {"content": "end"}
    assert _finish(items) == ["stop"]


def test_ollama_without_counts_reports_no_usage() -> None:
    done = {k: v for k, v in _ollama_done().items() if not k.endswith("_count")}
    items = _run(OllamaDecoder("m", 0), _lines(_ollama("a"), done))
    assert _usage(items) == []
    assert items[-1] is END


def test_ollama_cached_prompt_without_prompt_count_counts_zero() -> None:
    items = _run(OllamaDecoder("m", 0), _lines(_ollama("a"), _ollama_done(eval_count=4)))
    assert _usage(items) == [{"prompt_tokens": 0, "completion_tokens": 4, "total_tokens": 4}]


def test_ollama_stream_without_done_has_no_finish_and_no_end() -> None:
    # GIVEN a stream cut before its final line (and a trailing partial line) WHEN decoded
    items = _run(OllamaDecoder("m", 0), _lines(_ollama("a"), _ollama("b")))
    # THEN no finish and no END: the relay ends it as incomplete
    assert len(items) == 2
    assert _finish(items) == []
    assert END not in items


def test_ollama_error_line_fails_and_silences_the_rest() -> None:
    raw = _lines(_ollama("a"), {"error": "model 'x' not found"}, _ollama("b"), _ollama_done())
    items = _run(OllamaDecoder("m", 0), raw)
    assert items[1:] == [Failed("Upstream error: model 'x' not found")]


@pytest.mark.parametrize("line", ['{"message": {"content": "a"', "[1, 2]", "null", '"text"', '{"message": "x"}'])
def test_ollama_malformed_line_fails(line: str) -> None:
    items = _run(OllamaDecoder("m", 0), _lines(_ollama("a"), line, _ollama_done()))
    assert items[1:] == [Failed(MALFORMED)]


def test_ollama_malformed_tool_call_fails() -> None:
    items = _run(OllamaDecoder("m", 0), _lines(_ollama("", tool_calls=[{"function": {"arguments": {}}}])))
    assert items == [Failed(MALFORMED)]


def test_trailing_unterminated_final_line_ends_at_close() -> None:
    decoder = OllamaDecoder("m", 0)
    assert len(decoder.feed(_lines(_ollama("a")) + json.dumps(_ollama_done()).encode())) == 1
    assert decoder.close()[-1] is END


def test_line_past_the_cap_fails() -> None:
    decoder = OllamaDecoder("m", 0)
    items = decoder.feed(_lines(_ollama("a")) + b"x" * (MAX_LINE_BYTES + 1))
    assert len(items) == 2 and isinstance(items[1], Failed) and "longer than" in items[1].message
    assert decoder.feed(_lines(_ollama_done())) + decoder.close() == []


def test_nothing_after_end() -> None:
    decoder = OllamaDecoder("m", 0)
    assert decoder.feed(_lines(_ollama("a"), _ollama_done()))[-1] is END
    assert decoder.feed(_lines(_ollama("late"), {"error": "x"})) + decoder.close() == []


# The generic decoder, with the default fields: this project's own NDJSON endpoint output.


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "req_1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE_CHUNK = {
    "id": "req_1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "gpt",
    "choices": [],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}
SUMMARY = {
    "object": "relay.summary",
    "id": "req_1",
    "model": "gpt",
    "finish_reason": "length",
    "termination_reason": "length",
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11, "estimated": False},
}
RELAY_STREAM = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Hi"}),
    _chunk({"content": " there"}),
    _chunk({}, "length"),
    USAGE_CHUNK,
    SUMMARY,
]


@pytest.mark.parametrize("split", [0, 1, 5])
def test_generic_defaults_read_this_relays_own_stream(split: int) -> None:
    items = _run(NDJSONDecoder("m", 2), _lines(*RELAY_STREAM), split=split)
    assert _deltas(items) == [{"role": "assistant", "content": ""}, {"content": "Hi"}, {"content": " there"}]
    assert _finish(items) == ["length"]
    assert _usage(items) == [{"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}]
    assert items[-1] is END
    assert all(i["model"] == "m" and i["created"] == 2 for i in items if isinstance(i, dict))


def test_generic_finish_before_the_final_line_is_held() -> None:
    # GIVEN this relay's stream cut after its finish chunk, before the summary line
    items = _run(NDJSONDecoder("m", 0), _lines(*RELAY_STREAM[:5]))
    # THEN no finish and no END reach the relay: it ends the stream as incomplete
    assert _finish(items) == []
    assert END not in items


def test_generic_tool_calls_and_reasoning_pass_through() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    raw = _lines(
        _chunk({"role": "assistant", "reasoning_content": "Hmm"}),
        _chunk({"tool_calls": [call]}),
        _chunk({}, "tool_calls"),
        {**SUMMARY, "finish_reason": "tool_calls"},
    )
    items = _run(NDJSONDecoder("m", 0), raw)
    assert _deltas(items) == [{"role": "assistant", "reasoning_content": "Hmm"}, {"tool_calls": [call]}]
    assert _finish(items) == ["tool_calls"]


def test_generic_error_line_fails() -> None:
    error = {
        "error": {
            "message": "The stream ended without a finish_reason (incomplete).",
            "type": "upstream_error",
            "code": "incomplete",
        }
    }
    items = _run(NDJSONDecoder("m", 0), _lines(RELAY_STREAM[1], error, SUMMARY))
    assert items[1:] == [Failed("Upstream error: The stream ended without a finish_reason (incomplete).")]


def test_generic_malformed_line_fails() -> None:
    items = _run(NDJSONDecoder("m", 0), _lines(RELAY_STREAM[1], '{"choices": [', SUMMARY))
    assert items[1:] == [Failed(MALFORMED)]


TOKEN_FIELDS = {"content": "token", "done": "stop", "prompt_tokens": "in", "completion_tokens": "out"}


def test_generic_configured_fields() -> None:
    # GIVEN a server that streams {"token"} lines and a final {"stop": true, "in", "out"} line
    raw = _lines({"token": "Hel"}, {"token": "lo"}, {"token": "", "stop": True, "in": 3, "out": 5})
    # WHEN decoded with its fields configured
    items = _run(NDJSONDecoder("m", 0, FieldPaths.parse(TOKEN_FIELDS)), raw)
    # THEN content, a stop finish (the final line is its finish), its counts, the end
    assert _deltas(items) == [{"role": "assistant", "content": "Hel"}, {"content": "lo"}]
    assert _finish(items) == ["stop"]
    assert _usage(items) == [{"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}]
    assert items[-1] is END


def test_generic_configured_finish_and_error_paths() -> None:
    fields = {**TOKEN_FIELDS, "finish_reason": "why", "error": "fault"}
    raw = _lines({"token": "a"}, {"stop": 1, "why": "length"})
    assert _finish(_run(NDJSONDecoder("m", 0, FieldPaths.parse(fields)), raw)) == ["length"]
    failed = _run(NDJSONDecoder("m", 0, FieldPaths.parse(fields)), _lines({"token": "a"}, {"fault": {"code": 7}}))
    assert failed[1:] == [Failed('Upstream error: {"code":7}')]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": "token"}, "Unknown NDJSON field 'text'"),
        ({"content": ""}, "'content' needs a dotted path"),
        ({"done": "a..b"}, "'done' needs a dotted path"),
    ],
)
def test_bad_field_config_is_a_value_error(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NDJSONDialect("http://h/stream", fields=fields)


def test_field_paths_index_lists() -> None:
    paths = FieldPaths.parse({"content": "out.1.text"})
    assert paths.get({"out": [{"text": "a"}, {"text": "b"}]}, "content") == "b"
    assert paths.get({"out": [{"text": "a"}]}, "content") is None
    assert paths.get({"out": "ab"}, "content") is None


def test_generic_dialect_request_passes_the_body_through() -> None:
    async def key() -> str:
        return "sk-inner"

    dialect = NDJSONDialect("http://10.0.0.5/api/v1/chat/stream", key)
    body = {"model": "client", "messages": [{"role": "user", "content": "x"}], "stream": True, "mock": {"tokens": 2}}
    request = asyncio.run(dialect.request(body, "inner-model", "req_9"))
    assert dialect.kind == "ndjson"
    assert request.url == "http://10.0.0.5/api/v1/chat/stream"
    assert json.loads(request.content) == {**body, "model": "inner-model"}
    assert request.headers["authorization"] == "Bearer sk-inner"
    assert request.headers["x-request-id"] == "req_9"
    assert request.headers["accept-encoding"] == "identity"
    assert isinstance(dialect.decoder("inner-model", 5), NDJSONDecoder)


@pytest.mark.parametrize(("field", "value"), [("n", 2), ("logprobs", True), ("top_logprobs", 3)])
def test_generic_dialect_refuses_what_one_choices_fields_cannot_carry(field: str, value: Any) -> None:
    # GIVEN fields that describe one choice's text THEN more choices or log probabilities are a 400 naming the
    # field, not an answer that silently dropped them
    from llm_relay.errors import InvalidRequest

    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True, field: value}
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(NDJSONDialect("http://h/stream").request(body, "m", "r"))
    assert refused.value.param == field
    # AND their defaults pass
    plain = {**body, "n": 1, "logprobs": False, "top_logprobs": None}
    assert asyncio.run(NDJSONDialect("http://h/stream").request(plain, "m", "r")).url == "http://h/stream"


def test_generic_final_line_without_an_output_count_reports_no_usage() -> None:
    # GIVEN a server whose final line counts the prompt only
    raw = _lines({"token": "a"}, {"stop": True, "in": 3})
    items = _run(NDJSONDecoder("m", 0, FieldPaths.parse(TOKEN_FIELDS)), raw)
    # THEN no usage chunk: the relay estimates the answer instead of billing its output as 0 tokens
    assert _usage(items) == [] and _finish(items) == ["stop"] and items[-1] is END


@pytest.mark.parametrize("reason", ["client_cancelled", "deadline", "budget_exceeded", "incomplete"])
def test_another_relays_summary_of_an_unfinished_stream_is_a_failure(reason: str) -> None:
    # GIVEN another relay (the default fields) whose stream did not finish: its summary says why
    summary = {"object": "relay.summary", "finish_reason": None, "termination_reason": reason, "usage": None}
    items = _run(NDJSONDecoder("m", 0), _lines({"choices": [{"index": 0, "delta": {"content": "a"}}]}, summary))
    # THEN the stream ends as an upstream failure naming it, not as a finished answer
    assert items[-1] == Failed(f"Upstream stream ended without finishing ({reason}).")
    assert _finish(items) == [] and _usage(items) == []  # it gave no counts: the relay estimates


def test_another_relays_counts_of_an_unfinished_stream_are_kept() -> None:
    # GIVEN another relay's summary of a cancelled stream, with the usage its upstream reported
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    summary = {"object": "relay.summary", "termination_reason": "client_cancelled", "usage": usage}
    items = _run(NDJSONDecoder("m", 0), _lines({"choices": [{"index": 0, "delta": {"content": "a"}}]}, summary))
    # THEN those counts are what the record bills, then the stream fails
    assert _usage(items) == [usage]
    assert isinstance(items[-1], Failed)


def test_generic_final_line_without_a_prompt_count_reports_the_output_count_alone() -> None:
    # GIVEN a server whose final line counts its output only
    raw = _lines({"token": "a"}, {"stop": True, "out": 4})
    items = _run(NDJSONDecoder("m", 0, FieldPaths.parse(TOKEN_FIELDS)), raw)
    # THEN the usage chunk carries the output count and no prompt count (not a prompt of 0 tokens): the relay
    # estimates the prompt
    assert _usage(items) == [{"completion_tokens": 4}] and items[-1] is END

"""The assembled answer's validation, without a stream: what a request asks to be checked, the schema refused before
admission, the answer kept from its chunks and judged at its finish, and the verdict's shape. The bounds a hostile
schema meets (size, remote references, a catastrophic pattern, a validation that runs long) are tested for what they
guarantee: a 400, nothing fetched, an event loop that keeps running, an end within the deadline."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest

from llm_relay.chat_request import validate_chat_request
from llm_relay.dynamo.layout import serialize, usage_item, usage_record
from llm_relay.encoding import error_body, summary_body
from llm_relay.errors import InvalidRequest
from llm_relay.usage import UsageRecord, record_for
from llm_relay.validation import SCHEMA_PARAM, AnswerCheck, Expectation, Verdict, answer_check, expectation_of
from llm_relay.validation.schema import MAX_SCHEMA_BYTES, OutOfTime, schema_errors, schema_problem
from tests.unit.test_metrics import by_metric, context, documents, emitter, outcome

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "pattern": "^[A-Z]"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _chat(**extra: Any) -> Any:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    return validate_chat_request(body, max_tokens_cap=1000, allowed_models=None)


def _schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}


def _text_chunks(text: str, finish: str = "stop", size: int = 3, index: int = 0) -> list[dict[str, Any]]:
    """The answer as a stream sends it: a role chunk, the text a few characters a chunk, the finish."""
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    chunks = [{"choices": [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [{"choices": [{"index": index, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    return [*chunks, {"choices": [{"index": index, "delta": {}, "finish_reason": finish}]}]


def _call_chunks(arguments: str, index: int = 0) -> list[dict[str, Any]]:
    first = {"index": index, "id": f"call_{index}", "type": "function", "function": {"name": "f", "arguments": ""}}
    pieces = [arguments[i : i + 4] for i in range(0, len(arguments), 4)]
    chunks = [{"choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]}]
    for piece in pieces:
        call = {"index": index, "function": {"arguments": piece}}
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]})
    return chunks


def _judged(check: AnswerCheck, chunks: list[dict[str, Any]]) -> list[Verdict | None]:
    """Feed the chunks as the stream does; the verdict each finishing chunk got."""

    async def main() -> list[Verdict | None]:
        verdicts = []
        for chunk in chunks:
            if check.add(chunk):
                verdicts.append(await check.judge())
        return verdicts

    return anyio.run(main)


# --- what a request asks --------------------------------------------------------------------------------------
def test_a_request_that_asks_nothing_is_not_checked_and_keeps_nothing() -> None:
    assert expectation_of(_chat()) is None
    assert answer_check(_chat(response_format={"type": "text"})) is None


def test_what_each_request_asks_to_be_checked() -> None:
    assert expectation_of(_chat(response_format={"type": "json_object"})) == Expectation("json_object")
    assert expectation_of(_chat(response_format=_schema_format(PERSON), n=2)) == Expectation(
        "json_schema", PERSON, choices=2
    )
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert expectation_of(_chat(tools=tools)) == Expectation(tools=True)
    # a json_schema format without a schema (OpenAI makes it optional): its content is checked as JSON only
    assert expectation_of(_chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}})) == Expectation(
        "json_schema"
    )


# --- the schema, before admission ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("response_format", "param", "words"),
    [
        (_schema_format({"type": "objekt"}), SCHEMA_PARAM, "not a valid JSON schema"),
        (_schema_format(["not", "an", "object"]), SCHEMA_PARAM, "expected a JSON schema"),
        ({"type": "json_schema", "json_schema": "person"}, "response_format.json_schema", "expected an object"),
        (_schema_format({"$schema": "https://example.com/my-draft", "type": "object"}), SCHEMA_PARAM, "draft"),
        (_schema_format({"type": "string", "pattern": "(unclosed"}), SCHEMA_PARAM, "regex"),
        (_schema_format({"properties": {"a": {"$ref": "https://example.com/a.json"}}}), SCHEMA_PARAM, "inside"),
        (_schema_format({"patternProperties": {"^a": {}}, "unevaluatedProperties": False}), SCHEMA_PARAM, "not supp"),
    ],
)
def test_a_schema_no_answer_can_be_checked_by_is_a_400_naming_it(
    response_format: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _chat(response_format=response_format)
    assert refused.value.param == param
    assert words in refused.value.message and f"'{param}'" in refused.value.message


def test_a_schema_over_the_size_bound_is_refused_before_it_is_checked() -> None:
    schema = {"type": "object", "description": "x" * MAX_SCHEMA_BYTES}
    with pytest.raises(InvalidRequest, match="bytes of JSON") as refused:
        _chat(response_format=_schema_format(schema))
    assert refused.value.param == SCHEMA_PARAM


def test_schemas_of_every_supported_draft_and_local_references_are_accepted() -> None:
    assert schema_problem(PERSON) is None
    assert schema_problem({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}) is None
    assert schema_problem({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}) is None
    defs = {"$defs": {"age": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/age"}}}
    assert schema_problem(defs) is None
    embedded = {"$id": "https://example.com/root.json", "$defs": {"a": {"$id": "age.json", "type": "integer"}}}
    assert schema_problem({**embedded, "properties": {"a": {"$ref": "age.json"}}}) is None
    assert schema_problem({"type": "string", "pattern": r"^\p{L}+$"}) is None  # the regex engine's syntax, not re's


def test_json_schema_is_imported_only_by_a_request_with_a_schema() -> None:
    script = (
        "import sys\n"
        "from llm_relay.chat_request import validate_chat_request\n"
        "from llm_relay.stream import RelayStream\n"
        "body = {'model': 'm', 'messages': [{'role': 'user', 'content': 'x'}], "
        "'response_format': {'type': 'json_object'}}\n"
        "validate_chat_request(body, max_tokens_cap=10, allowed_models=None)\n"
        "print('jsonschema' in sys.modules)\n"
        "schema = {'type': 'json_schema', 'json_schema': {'name': 'x', 'schema': {'type': 'object'}}}\n"
        "body['response_format'] = schema\n"
        "validate_chat_request(body, max_tokens_cap=10, allowed_models=None)\n"
        "print('jsonschema' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["False", "True"]


# --- the answer, judged ----------------------------------------------------------------------------------------
def test_a_valid_structured_answer_split_across_chunks_is_valid_on_its_finishing_chunk() -> None:
    check = AnswerCheck(Expectation("json_schema", PERSON))
    verdicts = _judged(check, _text_chunks(json.dumps({"name": "Ada", "age": 36})))
    assert verdicts == [Verdict(True)]
    assert check.verdict == Verdict(True)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"name": "Ada", "age": 3', "content: not valid JSON (Expecting ',' delimiter: line 1 column 25)"),
        ("", "content: empty, not JSON"),
        ('{"a": NaN}', "content: not valid JSON (NaN or Infinity)"),
        ("[1, 2]", "content: not a JSON object"),
    ],
)
def test_json_object_answers_that_are_not_one_are_invalid_and_say_where(text: str, error: str) -> None:
    check = AnswerCheck(Expectation("json_object"))
    assert _judged(check, _text_chunks(text)) == [Verdict(False, (error,))]


def test_a_schema_violation_names_the_schema_keywords_never_the_answer() -> None:
    # GIVEN an answer that breaks four of the schema's rules, with text a log must never hold
    answer = {"name": "secret-value-ada", "age": -4, "extra": "secret-extra"}
    check = AnswerCheck(Expectation("json_schema", PERSON))
    # WHEN it is judged
    (verdict,) = _judged(check, _text_chunks(json.dumps(answer)))
    # THEN it is invalid with at most three errors, each the failing keyword's place and value in the schema
    assert verdict is not None and not verdict.valid
    assert verdict.errors == (
        'content: fails /properties/name/pattern = "^[A-Z]"',
        "content: fails /properties/age/minimum = 0",
        "content: fails /additionalProperties = false",
    )
    assert "secret" not in json.dumps(verdict.as_json())


def test_a_missing_property_is_named_from_the_schema() -> None:
    check = AnswerCheck(Expectation("json_schema", PERSON))
    (verdict,) = _judged(check, _text_chunks('{"name": "Ada"}'))
    assert verdict == Verdict(False, ("content: fails /required: 'age' is a required property",))


def test_a_refusal_instead_of_json_is_invalid() -> None:
    check = AnswerCheck(Expectation("json_object"))
    refusal = [{"choices": [{"index": 0, "delta": {"refusal": "I can't help with that."}, "finish_reason": None}]}]
    finish = [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    assert _judged(check, refusal + finish) == [Verdict(False, ("content: no JSON (the model refused)",))]


def test_tool_call_arguments_must_each_be_a_json_object() -> None:
    # GIVEN a turn that ends in three calls: good arguments, broken JSON, and JSON that is not an object
    check = AnswerCheck(Expectation(tools=True))
    chunks = _call_chunks('{"city": "Paris"}', 0) + _call_chunks('{"city": "Par', 1) + _call_chunks("[1]", 2)
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    # WHEN it is judged THEN the two bad calls are named by their index
    (verdict,) = _judged(check, [*chunks, finish])
    assert verdict is not None
    assert verdict.errors == (
        "tool_calls[1].function.arguments: not valid JSON (Unterminated string starting at: line 1 column 10)",
        "tool_calls[2].function.arguments: not a JSON object",
    )


def test_the_deprecated_function_call_is_checked_as_a_call() -> None:
    check = AnswerCheck(Expectation(tools=True))
    pieces = [{"name": "f", "arguments": '{"a": '}, {"arguments": "1"}]
    chunks = [{"choices": [{"index": 0, "delta": {"function_call": p}, "finish_reason": None}]} for p in pieces]
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "function_call"}]}
    error = "function_call.arguments: not valid JSON (Expecting ',' delimiter: line 1 column 8)"
    assert _judged(check, [*chunks, finish]) == [Verdict(False, (error,))]


def test_a_turn_that_ends_in_tool_calls_is_judged_by_its_calls_not_by_its_content() -> None:
    check = AnswerCheck(Expectation("json_object", tools=True))
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    assert _judged(check, [*_call_chunks('{"a": 1}'), finish]) == [Verdict(True)]


def test_an_answer_with_nothing_asked_of_it_has_no_verdict() -> None:
    # tools offered, but the model answered in text: nothing was asked of text
    check = AnswerCheck(Expectation(tools=True))
    assert _judged(check, _text_chunks("Hello.")) == [None]
    assert check.verdict is None


def test_choices_are_judged_as_each_finishes_and_named_when_there_are_several() -> None:
    check = AnswerCheck(Expectation("json_object", choices=2))
    first, second = _text_chunks('{"a": 1}', index=0), _text_chunks("nope", index=1)
    verdicts = _judged(check, first + second)
    assert verdicts[0] == Verdict(True)  # the audit so far, on the first choice's finish
    assert verdicts[1] == Verdict(False, ("choices[1].content: not valid JSON (Expecting value: line 1 column 1)",))


# --- the bounds --------------------------------------------------------------------------------------------------
def test_a_catastrophic_pattern_times_out_without_stalling_the_event_loop() -> None:
    # GIVEN a schema whose pattern backtracks exponentially on the answer, and a short validation deadline
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a|aa)+$"}}}
    check = AnswerCheck(Expectation("json_schema", schema), timeout_s=0.3)
    chunks = _text_chunks(json.dumps({"s": "a" * 60 + "!"}))
    ticks = 0

    async def main() -> Verdict | None:
        nonlocal ticks

        async def tick() -> None:
            nonlocal ticks
            while True:
                await anyio.sleep(0.01)
                ticks += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            for chunk in chunks:
                check.add(chunk)
            verdict = await check.judge()
            tg.cancel_scope.cancel()
        return verdict

    started = time.monotonic()
    verdict = anyio.run(main)
    # THEN the verdict is "timed out", within the bound, and the loop ran meanwhile (the match released the GIL)
    assert verdict == Verdict(False, ("validation timed out",))
    assert time.monotonic() - started < 2.0
    assert ticks >= 10


def test_a_long_validation_stops_itself_at_the_deadline() -> None:
    # GIVEN an answer whose validation takes seconds of keyword after keyword (no pattern at all)
    schema = {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}}
    instance = list(range(300_000))
    # WHEN it is validated with a deadline THEN it stops there, in the thread that ran it
    started = time.monotonic()
    with pytest.raises(OutOfTime):
        schema_errors(schema, instance, deadline=started + 0.2, limit=3)
    assert time.monotonic() - started < 1.0


def test_format_is_an_annotation_not_asserted() -> None:
    schema = {"type": "object", "properties": {"mail": {"type": "string", "format": "email"}}}
    check = AnswerCheck(Expectation("json_schema", schema))
    assert _judged(check, _text_chunks('{"mail": "not an address"}')) == [Verdict(True)]


def test_a_reference_let_through_that_does_not_resolve_is_an_error_not_a_fetch() -> None:
    # a fragment pointing nowhere passes the check before admission; at the end it is the schema's error
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    assert schema_problem(schema) is None
    check = AnswerCheck(Expectation("json_schema", schema))
    (verdict,) = _judged(check, _text_chunks('{"a": 1}'))
    assert verdict == Verdict(False, ("content: a reference in the schema does not resolve inside it",))


# --- the verdict -----------------------------------------------------------------------------------------------
def test_a_verdict_keeps_three_distinct_short_errors() -> None:
    verdict = Verdict.of(["a", "a", "b", "x" * 500, "c", "d"])
    assert not verdict.valid
    assert verdict.errors[:2] == ("a", "b") and len(verdict.errors) == 3
    assert len(verdict.errors[2]) == 200 and verdict.errors[2].endswith("…")
    assert Verdict.of([]) == Verdict(True)


def test_a_verdict_reads_back_from_its_stored_form() -> None:
    verdict = Verdict(False, ("content: empty, not JSON",))
    assert Verdict.from_item(verdict.as_json()) == verdict
    assert Verdict.from_item({"valid": True, "errors": []}) == Verdict(True)
    assert Verdict.from_item(None) is None
    assert Verdict.from_item({"valid": "yes"}) is None
    assert verdict.message == "The answer failed the relay's validation: content: empty, not JSON."


# --- where the verdict goes ------------------------------------------------------------------------------------
INVALID = Verdict(False, ("content: empty, not JSON",))


def test_the_record_item_holds_a_verdict_only_when_there_is_one_and_reads_it_back() -> None:
    plain = UsageRecord("rk_1", "req_1", "m", 1_700_000_000.0, "stop")
    assert "validation" not in usage_item(plain, 90)
    checked = record_for(context(), outcome(validation=INVALID))
    item = usage_item(checked, 90)
    assert item["validation"] == {"valid": False, "errors": ["content: empty, not JSON"]}
    serialize(item)  # a map DynamoDB takes (a bool and a list of strings)
    assert usage_record(item).validation == INVALID
    assert checked.as_json()["validation"] == INVALID.as_json() and plain.as_json()["validation"] is None


def test_the_summary_and_the_invalid_output_error_carry_the_verdict() -> None:
    assert "validation" not in summary_body("req_1", "m", outcome())
    assert summary_body("req_1", "m", outcome(validation=Verdict(True)))["validation"] == {"valid": True, "errors": []}
    refused = outcome(validation=INVALID, error=INVALID.message, error_code="invalid_output")
    assert refused.is_error and refused.reason.value == "stop"
    error = error_body("req_1", refused)["error"]
    assert (error["code"], error["type"], error["message"]) == ("invalid_output", "upstream_error", INVALID.message)
    assert error["validation"] == INVALID.as_json() and "entity_types" not in error


def test_the_metric_counts_each_verdict_by_result_and_nothing_without_one() -> None:
    lines: list[str] = []
    emitter(lines).request_finished(context(), outcome())
    assert "OutputValidation" not in by_metric(documents(lines))
    for verdict, result in ((Verdict(True), "valid"), (INVALID, "invalid")):
        lines.clear()
        emitter(lines).request_finished(context(), outcome(validation=verdict))
        found = by_metric(documents(lines))["OutputValidation"]
        assert found["dimensions"] == [["result", "service"]] and found["doc"]["result"] == result

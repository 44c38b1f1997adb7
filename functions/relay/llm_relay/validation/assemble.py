"""The answer assembled as it is relayed, and judged when a choice finishes (`AnswerCheck`).

It keeps only what will be checked (a choice's content when a structured output was asked for; tool-call arguments
when tools were offered), appended from the chunks the client is sent: with the compliance gate, what the gate
released. A choice is judged at its `finish_reason`, before that chunk goes out, so the chunk can carry the verdict.
A turn that ends in tool calls is judged by its calls (each call's arguments a JSON object); any other end by its
content (JSON, an object for `json_object`, valid against the schema for `json_schema`).

Parsing is linear and runs inline; a schema's validation runs in a worker thread within `VALIDATION_TIMEOUT_S`
(the event loop keeps serving other streams meanwhile), and a validation that runs out of time is invalid.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .expectation import Expectation, expectation_of
from .verdict import MAX_ERRORS, TIMED_OUT, Verdict

if TYPE_CHECKING:
    from ..chat_request import ChatRequest

logger = logging.getLogger(__name__)

VALIDATION_TIMEOUT_S = 1.0  # the longest a schema's validation may take (the finishing chunk waits for it)
_SLACK_S = 0.25  # the worker stops itself at the deadline; the wait for it gives up this much later regardless
_TOOL_FINISHES = frozenset({"tool_calls", "function_call"})


def answer_check(chat: ChatRequest) -> AnswerCheck | None:
    """The check of the answer to `chat`; None when it asks for nothing to be checked (nothing is kept)."""
    expectation = expectation_of(chat)
    return None if expectation is None else AnswerCheck(expectation)


@dataclass(slots=True)
class _Choice:
    content: list[str] = field(default_factory=list)
    refused: bool = False
    calls: dict[int, list[str]] = field(default_factory=dict)  # tool call index -> its arguments, in pieces
    legacy: list[str] | None = None  # the deprecated `function_call`'s arguments
    finish: str | None = None


class AnswerCheck:
    """One stream's check: `add` every chunk the client is sent; when it says a choice finished, `judge`."""

    def __init__(self, expectation: Expectation, *, timeout_s: float = VALIDATION_TIMEOUT_S) -> None:
        self.expectation = expectation
        self._timeout_s = timeout_s
        self._choices: dict[int, _Choice] = {}
        self._errors: dict[int, list[str]] = {}  # per judged choice: its errors (empty: valid)
        self._finished: list[int] = []  # finished, not judged yet
        self.verdict: Verdict | None = None  # None: nothing judged (yet)

    def add(self, chunk: dict[str, Any]) -> bool:
        """Keep what will be checked of one chunk; True when it finished a choice (then `judge` before sending it)."""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = _index(choice)
            slot = self._choices.setdefault(index, _Choice())
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._keep(slot, delta)
            finish = choice.get("finish_reason")
            if finish is not None and slot.finish is None:
                slot.finish = str(finish)
                self._finished.append(index)
        return bool(self._finished)

    def _keep(self, slot: _Choice, delta: dict[str, Any]) -> None:
        expectation = self.expectation
        if expectation.content is not None:
            if isinstance(delta.get("content"), str):
                slot.content.append(delta["content"])
            slot.refused = slot.refused or bool(delta.get("refusal"))
        if not expectation.tools:
            return
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                slot.calls.setdefault(_index(call), []).append(function["arguments"])
        legacy = delta.get("function_call")
        if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
            if slot.legacy is None:
                slot.legacy = []
            slot.legacy.append(legacy["arguments"])

    async def judge(self) -> Verdict | None:
        """Judge the choices that finished since the last call; the verdict over every choice judged so far (None
        while none had anything to check)."""
        finished, self._finished = self._finished, []
        for index in finished:
            errors = await self._judge_choice(self._choices[index])
            if errors is not None:
                prefix = f"choices[{index}]." if self.expectation.choices > 1 else ""
                self._errors[index] = [prefix + error for error in errors]
        if self._errors:
            self.verdict = Verdict.of(error for index in sorted(self._errors) for error in self._errors[index])
        return self.verdict

    async def _judge_choice(self, choice: _Choice) -> list[str] | None:
        """A finished choice's errors (empty: valid); None when nothing in it was asked to be checked."""
        if choice.finish in _TOOL_FINISHES:  # no call at all: nothing to check
            has_calls = bool(choice.calls) or choice.legacy is not None
            return _call_errors(choice) if self.expectation.tools and has_calls else None
        if self.expectation.content is None:
            return None
        parsed, errors = _parsed_content(choice, object_only=self.expectation.content == "json_object")
        schema = self.expectation.schema
        if errors or schema is None:
            return errors
        return await _schema_errors(schema, parsed, self._timeout_s)


def _index(item: dict[str, Any]) -> int:
    index = item.get("index", 0)
    return index if isinstance(index, int) else 0


def _call_errors(choice: _Choice) -> list[str]:
    errors = []
    for index in sorted(choice.calls):
        errors += _object_errors(f"tool_calls[{index}].function.arguments", "".join(choice.calls[index]))
    if choice.legacy is not None:
        errors += _object_errors("function_call.arguments", "".join(choice.legacy))
    return errors


def _object_errors(where: str, text: str) -> list[str]:
    parsed, error = _parse(text)
    if error is not None:
        return [f"{where}: {error}"]
    return [] if isinstance(parsed, dict) else [f"{where}: not a JSON object"]


def _parsed_content(choice: _Choice, *, object_only: bool) -> tuple[Any, list[str]]:
    text = "".join(choice.content)
    if not text.strip():
        return None, ["content: no JSON (the model refused)" if choice.refused else "content: empty, not JSON"]
    parsed, error = _parse(text)
    if error is not None:
        return None, [f"content: {error}"]
    if object_only and not isinstance(parsed, dict):
        return parsed, ["content: not a JSON object"]
    return parsed, []


def _parse(text: str) -> tuple[Any, str | None]:
    """JSON as RFC 8259 has it (no NaN or Infinity); the error says where, never what."""
    if not text.strip():
        return None, "empty, not JSON"
    try:
        return json.loads(text, parse_constant=_no_constant), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
    except ValueError:
        return None, "not valid JSON (NaN or Infinity)"
    except RecursionError:
        return None, "not valid JSON here (nested too deeply)"


def _no_constant(name: str) -> Any:
    raise ValueError(name)


async def _schema_errors(schema: dict[str, Any], instance: Any, timeout_s: float) -> list[str]:
    """The schema's errors, from a worker thread bounded in time; an out-of-time validation is one error."""
    deadline = time.monotonic() + timeout_s
    errors = [TIMED_OUT]
    with anyio.move_on_after(timeout_s + _SLACK_S):
        errors = await anyio.to_thread.run_sync(_validate, schema, instance, deadline, abandon_on_cancel=True)
    return errors


def _validate(schema: dict[str, Any], instance: Any, deadline: float) -> list[str]:
    from referencing.exceptions import Unresolvable

    from .schema import OutOfTime, schema_errors

    try:
        return ["content: " + error for error in schema_errors(schema, instance, deadline=deadline, limit=MAX_ERRORS)]
    except OutOfTime:
        return [TIMED_OUT]
    except RecursionError:
        return ["content: the schema recurses without end"]
    except Unresolvable:  # let through by the check before admission, and never fetched
        return ["content: a reference in the schema does not resolve inside it"]
    except Exception as exc:  # an unresolvable reference, a pattern that does not compile: the schema's, not ours
        logger.warning("validating an answer against its schema failed: %s", type(exc).__name__)
        return [f"content: the schema could not be applied ({type(exc).__name__})"]

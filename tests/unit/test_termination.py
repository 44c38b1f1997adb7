"""Termination reasons: the finish_reason mapping and which reasons are failures."""

from __future__ import annotations

import pytest

from llm_relay.termination import TerminationReason, error_type_of, reason_from_finish
from llm_relay.upstreams.ndjson import UNFINISHED


@pytest.mark.parametrize(
    ("finish_reason", "expected"),
    [
        ("stop", TerminationReason.STOP),
        ("length", TerminationReason.LENGTH),
        ("content_filter", TerminationReason.CONTENT_FILTER),
        ("tool_calls", TerminationReason.TOOL_CALLS),
        ("function_call", TerminationReason.TOOL_CALLS),
        (None, TerminationReason.INCOMPLETE),
        ("end_turn", TerminationReason.STOP),
        ("eos", TerminationReason.STOP),
        ("STOP", TerminationReason.STOP),
    ],
)
def test_reason_from_finish(finish_reason: str | None, expected: TerminationReason) -> None:
    # GIVEN an upstream finish_reason
    # WHEN it is mapped
    # THEN it gives exactly one termination reason
    assert reason_from_finish(finish_reason) is expected


def test_unknown_finish_reason_is_stop_not_a_failure() -> None:
    reason = reason_from_finish("max_output_tokens_reached_by_provider_x")
    assert reason is TerminationReason.STOP
    assert reason.is_failure is False


@pytest.mark.parametrize(
    ("reason", "failure"),
    [
        (TerminationReason.STOP, False),
        (TerminationReason.LENGTH, False),
        (TerminationReason.CONTENT_FILTER, False),
        (TerminationReason.TOOL_CALLS, False),
        (TerminationReason.CLIENT_CANCELLED, False),
        (TerminationReason.UPSTREAM_ERROR, True),
        (TerminationReason.UPSTREAM_TIMEOUT, True),
        (TerminationReason.DEADLINE, True),
        (TerminationReason.INCOMPLETE, True),
        (TerminationReason.BUDGET_EXCEEDED, True),
        (TerminationReason.LOST, False),  # never streamed: the reconciler writes it after the relay died
        (TerminationReason.LEDGER_UNAVAILABLE, True),  # its lease could not be renewed: a terminal error frame
    ],
)
def test_is_failure(reason: TerminationReason, failure: bool) -> None:
    assert reason.is_failure is failure


def test_every_reason_is_classified() -> None:
    # GIVEN the full enum (a new member must be added to the table above)
    assert {r.value for r in TerminationReason} == {
        "stop",
        "length",
        "content_filter",
        "tool_calls",
        "client_cancelled",
        "upstream_error",
        "upstream_timeout",
        "deadline",
        "incomplete",
        "budget_exceeded",
        "lost",
        "ledger_unavailable",
    }


def test_values_are_the_wire_strings() -> None:
    assert TerminationReason.CLIENT_CANCELLED.value == "client_cancelled"
    assert isinstance(TerminationReason.DEADLINE, str)
    assert str(TerminationReason.UPSTREAM_TIMEOUT) == "upstream_timeout"
    assert f"{TerminationReason.TOOL_CALLS}" == "tool_calls"


@pytest.mark.parametrize("finish_reason", ["error", "abort"])
def test_provider_failure_finish_reasons_are_upstream_errors(finish_reason: str) -> None:
    # GIVEN providers that report a failed generation in finish_reason (OpenRouter "error", vLLM "abort")
    reason = reason_from_finish(finish_reason)
    # THEN the stream is a failure, never a normal end (that would be a silent truncation)
    assert reason is TerminationReason.UPSTREAM_ERROR
    assert reason.is_failure


def test_the_ndjson_decoder_reads_every_unfinished_reason_of_another_relay_as_unfinished() -> None:
    # GIVEN this relay's own termination reasons, as another relay's NDJSON summary line carries them
    # THEN the decoder's list is exactly the reasons that say the model did not finish: every failure, a cancel, lost
    assert {reason.value for reason in TerminationReason if reason.is_failure} | {
        "client_cancelled",
        "lost",
    } == UNFINISHED
    assert "ledger_unavailable" in UNFINISHED and not {"stop", "length", "content_filter", "tool_calls"} & UNFINISHED


def test_a_failed_streams_error_type_comes_from_one_table() -> None:
    assert error_type_of(TerminationReason.BUDGET_EXCEEDED) == "rate_limit_error"
    assert error_type_of(TerminationReason.CLIENT_CANCELLED) == "invalid_request_error"
    assert error_type_of(TerminationReason.UPSTREAM_TIMEOUT) == "upstream_error"
    assert error_type_of(TerminationReason.CONTENT_FILTER, "content_filtered") == "invalid_request_error"
    assert error_type_of(TerminationReason.CONTENT_FILTER, "guardrail_unavailable") == "server_error"
    assert error_type_of(TerminationReason.UPSTREAM_ERROR, "invalid_output") == "upstream_error"

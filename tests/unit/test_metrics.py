"""EMF documents from the metrics emitter: names, units and dimension sets as CATALOGUE declares them."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from llm_relay import metrics as m
from llm_relay.chat_request import ChatRequest
from llm_relay.keys import ApiKey
from llm_relay.metering import Usage
from llm_relay.outcome import Prompt, RequestContext, StreamOutcome
from llm_relay.termination import TerminationReason


def emitter(lines: list[str]) -> m.MetricsEmitter:
    return m.MetricsEmitter("LLMRelay", "llm-relay", known_models=["gpt-4o-mini"], sink=lines.append)


def documents(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def by_metric(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                found[metric["Name"]] = {
                    "doc": doc,
                    "dimensions": directive["Dimensions"],
                    "unit": metric["Unit"],
                    "namespace": directive["Namespace"],
                }
    return found


def context(model: str = "gpt-4o-mini") -> RequestContext:
    chat = ChatRequest.model_validate({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    return RequestContext(
        request_id="req_1",
        key=ApiKey(key_id="rk_1", name="n"),
        chat=chat,
        prompt=Prompt.of(chat),
        mode="sse",
        started_at=0.0,
        started_epoch=0.0,
    )


def outcome(reason: TerminationReason = TerminationReason.STOP, **extra: Any) -> StreamOutcome:
    values: dict[str, Any] = {
        "reason": reason,
        "usage": Usage(10, 20),
        "ttft_s": 0.25,
        "tpot_s": 0.01,
        "duration_s": 1.5,
        "chunks": 21,
        "cost_usd": Decimal("0.0012"),
    }
    values.update(extra)
    return StreamOutcome(**values)


def test_finished_stream_emits_reason_and_per_model_figures() -> None:
    # GIVEN a stream that stopped normally
    lines: list[str] = []
    # WHEN its metrics are emitted
    emitter(lines).request_finished(context(), outcome(cost_usd=Decimal("0.0012")))
    found = by_metric(documents(lines))
    # THEN the termination reason is a dimension of StreamsTerminated
    streams = found[m.STREAMS]
    assert streams["dimensions"] == [["reason", "service"]]
    assert streams["doc"]["reason"] == "stop" and streams["doc"][m.STREAMS] == [1.0]
    assert streams["namespace"] == "LLMRelay"
    # AND latency, tokens and cost come per model and rolled up per service
    for name, value in (
        (m.TTFT, 250.0),
        (m.TPOT, 10.0),
        (m.DURATION, 1500.0),
        (m.PROMPT_TOKENS, 10.0),
        (m.COMPLETION_TOKENS, 20.0),
        (m.COST, 0.0012),
    ):
        assert found[name]["dimensions"] == [["model", "service"], ["service"]]
        assert found[name]["doc"][name] == [pytest.approx(value)]
        assert found[name]["doc"]["model"] == "gpt-4o-mini"
    assert found[m.TTFT]["unit"] == "Milliseconds"
    assert found[m.RETRIES]["doc"][m.RETRIES] == [0.0]
    assert m.UNPRICED not in found and m.CANCEL_LATENCY not in found


def test_unknown_model_becomes_other_and_unpriced() -> None:
    lines: list[str] = []
    emitter(lines).request_finished(context(model="someones-finetune-123"), outcome(cost_usd=None))
    found = by_metric(documents(lines))
    assert found[m.UNPRICED]["doc"]["model"] == "other"
    assert m.COST not in found


def test_cancel_latency_and_upstream_errors_by_class() -> None:
    lines: list[str] = []
    emitter(lines).request_finished(
        context(),
        outcome(
            TerminationReason.CLIENT_CANCELLED,
            cancel_source="disconnect",
            cancel_latency_s=0.003,
            retries=2,
            upstream_errors={"5xx": 2, "connect": 1},
        ),
    )
    docs = documents(lines)
    errors = {d["status_class"]: d[m.UPSTREAM_ERRORS] for d in docs if m.UPSTREAM_ERRORS in d}
    assert errors == {"5xx": [2.0], "connect": [1.0]}
    cancel = next(d for d in docs if m.CANCEL_LATENCY in d)
    assert cancel["channel"] == "disconnect" and cancel[m.CANCEL_LATENCY] == [pytest.approx(3.0)]
    assert next(d for d in docs if m.RETRIES in d)[m.RETRIES] == [2.0]


def test_rejection_reason_dimension() -> None:
    lines: list[str] = []
    emitter(lines).rejection("rate_limited")
    (doc,) = documents(lines)
    assert doc["reason"] == "rate_limited" and doc[m.REJECTIONS] == [1.0]


def test_emitting_with_the_wrong_dimensions_is_refused() -> None:
    with pytest.raises(ValueError, match="take dimensions"):
        emitter([]).emit({m.STREAMS: 1}, {m.MODEL: "x"})
    with pytest.raises(ValueError, match="different dimension sets"):
        emitter([]).emit({m.STREAMS: 1, m.TTFT: 1}, {m.REASON: "stop"})


def test_every_termination_reason_is_a_valid_dimension_value() -> None:
    lines: list[str] = []
    for reason in TerminationReason:
        emitter(lines).request_finished(context(), outcome(reason, cost_usd=None))
    reasons = {d["reason"] for d in documents(lines) if m.STREAMS in d}
    assert reasons == {r.value for r in TerminationReason}

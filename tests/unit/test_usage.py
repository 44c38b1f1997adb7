"""Usage records (pure): the totals the CLI prints (their DynamoDB item: test_layout.py)."""

from __future__ import annotations

import calendar
from decimal import Decimal

from llm_relay.usage import UsageRecord, UsageTotals

T = calendar.timegm((2025, 3, 4, 5, 6, 7, 0, 0, 0)) + 0.089


def record(**changes: object) -> UsageRecord:
    values: dict[str, object] = {
        "key_id": "rk_1",
        "request_id": "req_a",
        "model": "gpt-4o-mini",
        "started_epoch": T,
        "termination_reason": "stop",
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "cost_usd": Decimal("0.0000198"),
        "ttft_ms": Decimal("41.5"),
        "duration_ms": Decimal(300),
        "mode": "sse",
    }
    values.update(changes)
    return UsageRecord(**values)  # type: ignore[arg-type]


def test_totals() -> None:
    records = [
        record(),
        record(
            request_id="req_b",
            termination_reason="client_cancelled",
            usage_source="estimated",
            completion_tokens=3,
            cost_usd=Decimal("0.000001"),
        ),
        record(
            request_id="req_c",
            termination_reason="rate_limit_exceeded",
            usage_source="none",
            prompt_tokens=0,
            completion_tokens=0,
            cost_usd=Decimal(0),
        ),
        record(
            request_id="req_d",
            model="mystery",
            cost_usd=None,
            redactions={"EMAIL": 2},
            prompt_redactions={"EMAIL": 1, "IBAN": 1},
        ),
    ]
    totals = UsageTotals.of(records).as_json()
    assert totals == {
        "requests": 4,
        "prompt_tokens": 36,
        "completion_tokens": 63,
        "total_tokens": 99,
        "estimated_requests": 1,
        "unpriced_requests": 1,
        "cost_usd": "0.0000208",
        "termination_reasons": {"client_cancelled": 1, "rate_limit_exceeded": 1, "stop": 2},
        "redactions": {"EMAIL": 3, "IBAN": 1},  # the answer's and the prompt's, by entity type
    }

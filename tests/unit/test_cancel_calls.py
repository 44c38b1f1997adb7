"""The bound on a key's cancel calls: the allowance its limits give it (pure), and the bucket that spends it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from llm_relay.cancellation import CancelCalls
from llm_relay.errors import RateLimited
from llm_relay.keys import ApiKey
from llm_relay.limits.rules import CancelAllowance, Limits, cancel_allowance


@pytest.mark.parametrize(
    ("limits", "allowance"),
    [
        (Limits(rpm=1), CancelAllowance(burst=4, per_minute=2)),  # never fewer than 4 at once
        (Limits(rpm=60), CancelAllowance(burst=100, per_minute=120)),  # a minute's worth, at most 100
        (Limits(rpm=60, max_concurrent=5), CancelAllowance(burst=10, per_minute=120)),  # all its streams, twice
        (Limits(max_concurrent=30), CancelAllowance(burst=60, per_minute=600)),
        (Limits(), CancelAllowance(burst=100, per_minute=600)),  # unlimited: a ceiling all the same
        (Limits(rpm=0), CancelAllowance(burst=4, per_minute=1)),
    ],
)
def test_a_key_cancels_at_the_pace_its_limits_let_it_start_requests(limits: Limits, allowance: CancelAllowance) -> None:
    assert cancel_allowance(limits) == allowance


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _key(key_id: str, **limits: int) -> ApiKey:
    return ApiKey(key_id=key_id, name="t", limits={name: Decimal(value) for name, value in limits.items()})


def test_the_burst_is_taken_then_refused_with_the_wait_for_the_next_call_then_refilled_at_the_rate() -> None:
    # GIVEN a key limited to 1 request a minute: 4 cancel calls at once, 2 a minute
    clock = _Clock()
    calls = CancelCalls(Limits(), clock)
    key = _key("rk_a", rpm=1)
    # WHEN it makes 4 calls at once THEN they are taken; the fifth is refused, told to wait 30 s
    for _ in range(4):
        calls.take(key)
    with pytest.raises(RateLimited) as refused:
        calls.take(key)
    assert refused.value.status_code == 429 and refused.value.headers["retry-after-ms"] == "30000"
    assert "at most 4 at once and 2 a minute" in refused.value.message
    # WHEN 30 s pass THEN one more is taken, and the next refused again
    clock.now += 30
    calls.take(key)
    with pytest.raises(RateLimited):
        calls.take(key)


def test_a_refused_call_does_not_use_up_the_allowance_and_keys_are_apart() -> None:
    clock = _Clock()
    calls = CancelCalls(Limits(rpm=1), clock)  # the deployment's default: 1 request a minute
    flooding, other = _key("rk_a"), _key("rk_b")
    for _ in range(4):
        calls.take(flooding)
    for _ in range(50):  # refused calls: none of them pushes the next refill further away
        with pytest.raises(RateLimited):
            calls.take(flooding)
    clock.now += 30
    calls.take(flooding)
    calls.take(other)  # another key has its own bucket

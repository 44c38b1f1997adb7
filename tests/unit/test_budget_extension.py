"""The stream's budget guard, driven through the real `RelayStream` with the fakes of test_stream.py: the next
increment is asked for ahead of need while tokens keep flowing, never past the request's max_tokens; a refused
extension ends the stream at the reserved tokens (SSE terminal error, stream: false 429), none beyond them reaching
the client, though the record counts the chunk the upstream generated; a write still pending at the end does not
hold the terminal frame back, and finalization waits for its answer."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import anyio

from llm_relay.limits.budgets import OVERRUN_TOKENS, BudgetPeriod, Reservation, tokens_cost
from llm_relay.limits.extend import BudgetGuard, Extension, tokens_in
from llm_relay.metering import StreamMeter
from llm_relay.pricing import ModelPrice
from llm_relay.termination import TerminationReason
from tests.unit.test_stream import SSE, Run, chunk, relay

PRICE = ModelPrice(input=Decimal("0.15"), cached_input=Decimal("0.15"), output=Decimal("0.60"))
DAY = BudgetPeriod("daily_budget_usd", "D#2023-11-14", Decimal(1))


class FakeExtender:
    """Grants or refuses each extension; `gate` (when set) holds the answer back until the test opens it."""

    def __init__(self, grant: bool = True, gate: anyio.Event | None = None) -> None:
        self.grant = grant
        self.gate = gate
        self.asked: list[int] = []  # tokens reserved when each extension was asked for
        self.asked_event = anyio.Event()

    async def __call__(self, reservation: Reservation, tokens: int) -> Extension:
        self.asked.append(reservation.tokens)
        self.asked_event.set()
        if self.gate is not None:
            with anyio.fail_after(5):  # bounded, as the limiter bounds the write: a failing test ends, never hangs
                await self.gate.wait()
        return Extension(self.grant, reservation.cost_of(tokens) if self.grant else Decimal(0))


def guard(extender: FakeExtender, tokens: int = 8, max_tokens: int | None = None) -> BudgetGuard:
    reservation = Reservation.open(PRICE, (DAY,), prompt_tokens=1, max_tokens=max_tokens, increment=tokens)
    return BudgetGuard(reservation, extender)


def client_tokens(run: Run) -> list[str]:
    out = []
    for event in run.client.body.split("\n\n"):
        data = event.removeprefix("data: ")
        if event.startswith("data: {") and "choices" in data:
            out += [c["delta"].get("content") for c in json.loads(data)["choices"] if c["delta"].get("content")]
    return out


def test_the_next_increment_is_reserved_ahead_of_need_while_tokens_flow() -> None:
    # GIVEN 8 reserved tokens, increments of 8, and a store that grants
    extender = FakeExtender()
    budget = guard(extender)

    async def drive(run: Run) -> None:
        run.body.feed(*[chunk(f"t{i}") for i in range(12)], chunk(finish="stop"), "[DONE]")
        run.body.end()

    run = relay(drive, framing=SSE, budget=budget)
    # THEN every token reached the client and the stream ended normally
    assert client_tokens(run) == [f"t{i}" for i in range(12)]
    assert run.outcome.reason is TerminationReason.STOP
    # AND one extension was asked for, at the 6th token, while 8 were still reserved
    assert extender.asked == [8]
    assert (budget.reservation.tokens, budget.reservation.usd) == (16, Decimal("0.00000975"))


def test_a_refused_extension_ends_the_stream_at_the_reserved_tokens() -> None:
    # GIVEN 8 reserved tokens and a store that refuses the next increment
    budget = guard(FakeExtender(grant=False))

    async def drive(run: Run) -> None:
        run.body.feed(*[chunk(f"t{i}") for i in range(20)])

    run = relay(drive, framing=SSE, budget=budget)
    # THEN exactly the 8 reserved tokens reached the client, then the budget_exceeded terminal event
    assert client_tokens(run) == [f"t{i}" for i in range(8)]
    last = json.loads(run.client.body.split("\n\n")[-2].removeprefix("data: "))
    assert last["error"]["code"] == "budget_exceeded" and "[DONE]" not in run.client.body
    # AND the upstream was closed, and the outcome counts what the upstream generated: the client's 8 tokens and
    # the 9th, which found the reservation used up (the provider bills it; the client never saw it)
    assert run.body.closed.is_set()
    assert run.outcome.reason is TerminationReason.BUDGET_EXCEEDED and run.outcome.usage.completion_tokens == 9


def test_stream_false_gets_429_budget_exceeded_when_an_extension_is_refused() -> None:
    budget = guard(FakeExtender(grant=False))

    async def drive(run: Run) -> None:
        run.body.feed(*[chunk(f"t{i}") for i in range(20)])

    run = relay(drive, framing=None, stream=False, budget=budget)
    assert run.client.status == 429
    assert json.loads(run.client.body)["error"]["code"] == "budget_exceeded"
    assert run.outcome.usage.completion_tokens == 9


def test_the_pump_waits_for_an_extension_only_at_the_end_of_the_reservation() -> None:
    # GIVEN a store that answers the extension only when the test lets it
    extender = FakeExtender(gate=anyio.Event())
    budget = guard(extender)

    async def drive(run: Run) -> None:
        run.body.feed(*[chunk(f"t{i}") for i in range(12)], chunk(finish="stop"), "[DONE]")
        run.body.end()
        # WHEN the reserved 8 tokens are out and the answer is still pending
        await run.client.wait_for('"t7"')
        await extender.asked_event.wait()
        assert client_tokens(run) == [f"t{i}" for i in range(8)]
        # THEN the 9th waits for it, and follows once it is granted
        assert extender.gate is not None
        extender.gate.set()

    run = relay(drive, framing=SSE, budget=budget)
    assert client_tokens(run) == [f"t{i}" for i in range(12)]
    assert run.outcome.reason is TerminationReason.STOP


def test_tokens_are_counted_as_the_meter_counts_them() -> None:
    chunks: list[dict[str, Any]] = [
        chunk("a"),
        chunk(),  # role-only / empty delta
        chunk(finish="stop"),
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"id": "x"}]}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}, {"index": 1, "delta": {"content": "b"}}]},
        {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 4}},
    ]
    meter = StreamMeter(started_at=0.0)
    counted = 0
    for item in chunks:
        counted += tokens_in(item)
        meter.observe(item, 1.0)
    assert counted == meter.content_chunks == meter.estimated_tokens == 4


def test_a_long_delta_counts_a_token_per_four_characters() -> None:
    # GIVEN a Bedrock-style delta of several tokens, and an Ollama-style tool call arriving whole
    text = {"choices": [{"index": 0, "delta": {"content": "Hello, how are you today?"}}]}  # 25 characters
    arguments = '{"city": "Paris", "unit": "celsius", "days": 7}'  # 47 characters, plus the name
    call = {"type": "function", "function": {"name": "weather", "arguments": arguments}}
    tool = {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
    # THEN the budget counts them as the text they carry, not as one token each
    assert tokens_in(text) == 6
    assert tokens_in(tool) == (len(arguments) + len("weather")) // 4 == 13
    # AND text outside ASCII (about a token a character in CJK) as a token a character
    cjk = {"choices": [{"index": 0, "delta": {"content": "今天天气很好, ok"}}]}
    assert tokens_in(cjk) == 6 + len(", ok") // 4


def test_a_chunk_worth_several_increments_waits_for_as_many_extensions() -> None:
    # GIVEN 8 reserved tokens, increments of 8, a store that grants, and a chunk worth 20 tokens (80 characters:
    # an Ollama tool call arriving whole, a long Bedrock delta)
    extender = FakeExtender()
    budget = guard(extender)
    long_text = "x" * 80

    async def drive(run: Run) -> None:
        run.body.feed(chunk(long_text), chunk(finish="stop"), "[DONE]")
        run.body.end()

    run = relay(drive, framing=SSE, budget=budget)
    # THEN it is relayed after two extensions (8 -> 16 -> 24 tokens), and the stream finishes
    assert client_tokens(run) == [long_text]
    assert extender.asked == [8, 16] and budget.reservation.tokens == 24
    assert run.outcome.reason is TerminationReason.STOP


def test_the_refused_chunk_and_what_came_with_it_are_counted_but_never_sent() -> None:
    # GIVEN 8 reserved tokens, a store that refuses the next increment, and an upstream read that holds the 8th to
    # the 11th tokens and its usage report (the provider counted 11)
    budget = guard(FakeExtender(grant=False))
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 11}}

    async def drive(run: Run) -> None:
        run.body.feed(*[chunk(f"t{i}") for i in range(7)])
        run.body.feed_together(*[chunk(f"t{i}") for i in range(7, 11)], usage)

    run = relay(drive, framing=SSE, budget=budget, include_usage=True)
    # THEN the client got the 8 reserved tokens and no usage chunk (the stream ended before it)
    assert client_tokens(run) == [f"t{i}" for i in range(8)]
    assert '"usage"' not in run.client.body.split("\n\n")[-3]
    # AND the record counts what the upstream generated and reported: 11, not the 8 the client saw
    assert run.outcome.reason is TerminationReason.BUDGET_EXCEEDED
    assert (run.outcome.usage.completion_tokens, run.outcome.usage.source) == (11, "upstream")


def test_an_extension_never_reserves_past_max_tokens() -> None:
    # GIVEN increments of 8 and a request with max_tokens 10: 8 reserved at admission
    extender = FakeExtender()
    budget = guard(extender, max_tokens=10)

    async def drive(run: Run) -> None:
        run.body.feed(*[chunk(f"t{i}") for i in range(10)], chunk(finish="length"), "[DONE]")
        run.body.end()

    run = relay(drive, framing=SSE, budget=budget)
    # THEN one extension was asked for, for the 2 tokens left of the cap, and the stream ran to it
    assert client_tokens(run) == [f"t{i}" for i in range(10)]
    assert run.outcome.reason is TerminationReason.LENGTH
    assert extender.asked == [8]
    assert (budget.reservation.tokens, budget.reservation.usd) == (10, tokens_cost(PRICE, 1, 10))


def test_a_request_whose_cap_admission_covered_asks_for_no_extension() -> None:
    # GIVEN the default increment (1024) and a request with max_tokens 100: all of it reserved at admission
    extender = FakeExtender()
    budget = guard(extender, tokens=1024, max_tokens=100)

    async def drive(run: Run) -> None:
        for i in range(0, 100, 10):
            run.body.feed_together(*[chunk(f"t{j}") for j in range(i, i + 10)])
        run.body.feed(chunk(finish="length"), "[DONE]")
        run.body.end()

    run = relay(drive, framing=SSE, budget=budget)
    # THEN the 100 tokens streamed without a single extension write (none at the first token)
    assert len(client_tokens(run)) == 100 and run.outcome.reason is TerminationReason.LENGTH
    assert extender.asked == []
    assert budget.reservation.tokens == 100


def test_an_upstream_that_overruns_its_cap_waits_for_a_small_step_reserved_at_need() -> None:
    # GIVEN max_tokens 4 (all reserved at admission), increments of 8, and an upstream that sends 6 tokens anyway
    extender = FakeExtender(gate=anyio.Event())
    budget = guard(extender, max_tokens=4)

    async def drive(run: Run) -> None:
        run.body.feed(*[chunk(f"t{i}") for i in range(6)], chunk(finish="stop"), "[DONE]")
        run.body.end()
        # WHEN the 4 reserved tokens are out
        await extender.asked_event.wait()
        # THEN the extension was asked for only then (not ahead of need), and the 5th waits for it
        assert client_tokens(run) == [f"t{i}" for i in range(4)]
        assert extender.gate is not None
        extender.gate.set()

    run = relay(drive, framing=SSE, budget=budget)
    assert client_tokens(run) == [f"t{i}" for i in range(6)]
    assert extender.asked == [4] and budget.reservation.tokens == 4 + min(OVERRUN_TOKENS, 8)


def test_a_pending_extension_does_not_hold_the_terminal_frame_back() -> None:
    # GIVEN increments of 8 and a store that answers the extension only when the test lets it
    extender = FakeExtender(gate=anyio.Event())
    budget = guard(extender)

    async def drive(run: Run) -> None:
        # WHEN the answer ends (7 tokens) while the extension asked for at the 6th is still pending
        run.body.feed(*[chunk(f"t{i}") for i in range(7)], chunk(finish="stop"), "[DONE]")
        run.body.end()
        await extender.asked_event.wait()
        # THEN the terminal frame reaches the client without waiting for it
        with anyio.fail_after(5):
            await run.client.wait_for("[DONE]")
        # AND finalization waits for the write's answer (settlement swaps the whole reservation)
        assert run.ended == []
        assert extender.gate is not None
        extender.gate.set()

    run = relay(drive, framing=SSE, budget=budget)
    assert run.outcome.reason is TerminationReason.STOP and run.client.closed
    assert budget.reservation.tokens == 16

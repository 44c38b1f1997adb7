"""A stream never outlives its lease, without sockets or wall-clock waits (the harness of test_stream.py, with a
`Lease` whose clock the test sets): a lease that lapses, or a renewal that finds the request settled, ends the
stream with the `ledger_unavailable` terminal frame, and nothing decoded after the lapse reaches the client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from llm_relay.cancel_signal import CancelSignal
from llm_relay.chat_request import ChatRequest
from llm_relay.encoding import Framing
from llm_relay.keys import ApiKey
from llm_relay.leases import Lease
from llm_relay.limits import Ticket
from llm_relay.outcome import Prompt, RequestContext, StreamOutcome
from llm_relay.pricing import PriceTable
from llm_relay.stream import RelayStream
from llm_relay.termination import TerminationReason
from llm_relay.upstreams.http import OpenedStream
from llm_relay.upstreams.openai import OpenAIDecoder
from tests.unit.test_stream import SETTINGS, SSE, T0, Client, FakeClock, Run, UpstreamBody, chunk

LEASE_S = 6.0


class WallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def relay_leased(test: Callable[[Run, Lease, WallClock], Any], *, framing: Framing | None = SSE) -> Run:
    """One stream under a lease held until 1006 (end by 1005 by its own clock), driven by `test`."""
    body, client, clock, cancel, ended = UpstreamBody(), Client(), FakeClock(), CancelSignal(), []
    wall = WallClock(1000.0)
    lease = Lease(1006.0, LEASE_S, wall)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "stream": framing is not None}
    ctx = RequestContext(
        request_id="req_1",
        key=ApiKey(key_id="rk_1", name="t"),
        chat=(parsed := ChatRequest.model_validate(chat)),
        prompt=Prompt.of(parsed),
        mode="sse",
        started_at=T0,
        started_epoch=1000.0,
        ticket=Ticket(),
    )

    async def on_end(outcome: StreamOutcome) -> None:
        ended.append(outcome)

    async def main() -> Run:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
        async with httpx.AsyncClient(transport=transport, base_url="http://upstream/v1") as http:
            response = await http.send(http.build_request("POST", "/chat/completions"), stream=True)
            stream = RelayStream(
                ctx,
                OpenedStream(response, OpenAIDecoder()),
                framing=framing,
                cancel=cancel,
                on_end=on_end,
                pricer=PriceTable.load(),
                settings=SETTINGS,
                clock=clock,
                lease=lease,
            )
            run = Run(stream, body, client, clock, cancel, ended)
            with anyio.fail_after(10):  # a safety net only: every wait below is for an event
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stream, {"type": "http"}, client.receive, client.send)
                    await test(run, lease, wall)
            await body.aclose()
            return run

    return anyio.run(main)


def _events(run: Run) -> list[Any]:
    return [json.loads(e.removeprefix("data: ")) for e in run.client.body.split("\n\n") if e.startswith("data: {")]


def test_a_process_resumed_past_its_lease_relays_nothing_more_and_ends_with_the_ledger_frame() -> None:
    async def drive(run: Run, lease: Lease, wall: WallClock) -> None:
        # GIVEN a stream that relayed one chunk within its lease
        run.body.feed(chunk("a"))
        await run.client.wait_for('"a"')
        # WHEN the process resumes past the lease (no watcher ran meanwhile) with two chunks waiting in one read
        wall.now = 1005.0
        run.body.feed_together(chunk("b"), chunk("c"))
        await run.client.wait_for("ledger_unavailable")

    run = relay_leased(drive)
    # THEN neither reaches the client: the terminal error frame follows the last chunk relayed within the lease
    events = _events(run)
    assert [e["choices"][0]["delta"].get("content") for e in events if "choices" in e] == ["a"]
    assert events[-1]["error"]["code"] == "ledger_unavailable" and "[DONE]" not in run.client.body
    # AND both are counted (the upstream generated them, the provider bills them), the upstream closed at once
    assert run.outcome.reason is TerminationReason.LEDGER_UNAVAILABLE
    assert run.outcome.usage.completion_tokens == 3 and run.body.closed.is_set() and run.client.closed


def test_a_renewal_that_finds_the_request_settled_ends_a_waiting_stream_at_once() -> None:
    async def drive(run: Run, lease: Lease, wall: WallClock) -> None:
        # GIVEN a stream waiting for upstream bytes, well within its lease
        run.body.feed(chunk("a"))
        await run.client.wait_for('"a"')
        # WHEN a renewal finds its request settled by a reconciler
        lease.mark_settled()
        await run.client.wait_for("ledger_unavailable")

    run = relay_leased(drive)
    # THEN the stream ends with the ledger's terminal frame, saying the ledger settled it
    error = _events(run)[-1]["error"]
    assert error["code"] == "ledger_unavailable" and "settled" in error["message"]
    assert run.outcome.reason is TerminationReason.LEDGER_UNAVAILABLE and run.body.closed.is_set()


def test_a_stream_false_answer_whose_lease_lapsed_is_a_503() -> None:
    async def drive(run: Run, lease: Lease, wall: WallClock) -> None:
        run.body.feed(chunk("a"))
        wall.now = 1005.0
        run.body.feed(chunk("b"))
        while not run.client.closed:
            await run.client.wrote.wait()

    run = relay_leased(drive, framing=None)
    assert run.client.status == 503 and json.loads(run.client.body)["error"]["code"] == "ledger_unavailable"

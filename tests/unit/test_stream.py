"""The stream as an ASGI response, without sockets or wall-clock waits: a fake `receive`/`send`, the upstream
body behind `httpx.MockTransport`, and a clock the test moves. Each ending is triggered by what was sent or by
moving the clock, never by sleeping: one termination reason each, the upstream closed, finalized once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.types import Message

from llm_relay.cancel_signal import CancelSignal
from llm_relay.chat_request import ChatRequest
from llm_relay.encoding import Framing, NDJSONFraming, SSEFraming
from llm_relay.keys import ApiKey
from llm_relay.limits import Ticket
from llm_relay.limits.extend import BudgetGuard
from llm_relay.outcome import Prompt, RequestContext, StreamOutcome
from llm_relay.pricing import PriceTable
from llm_relay.settings import Settings
from llm_relay.stream import RelayStream
from llm_relay.termination import TerminationReason
from llm_relay.upstreams.http import OpenedStream
from llm_relay.upstreams.openai import OpenAIDecoder

T0 = 1000.0
SETTINGS = Settings(
    upstream_url="http://upstream/v1",
    upstream_first_token_timeout_s=60,
    upstream_idle_timeout_s=20,
    heartbeat_interval_s=15,
)


class FakeClock:
    """Monotonic time that moves only when the test says so; sleepers wake when it passes their time."""

    def __init__(self, start: float = T0) -> None:
        self.t = start
        self._moved = anyio.Event()

    def now(self) -> float:
        return self.t

    async def sleep_until(self, when: float) -> None:
        await anyio.lowlevel.checkpoint()  # like a real sleep, even when the time has come
        while self.t < when:
            await self._moved.wait()

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self._moved.set()
        self._moved = anyio.Event()


class UpstreamBody(httpx.AsyncByteStream):
    """The upstream's response body: what the test feeds, as it feeds it; records being closed."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[bytes | None](100)
        self.closed = anyio.Event()

    def feed(self, *events: Any) -> None:
        for event in events:
            data = event if isinstance(event, str) else json.dumps(event)
            self._send.send_nowait(f"data: {data}\n\n".encode())

    def feed_together(self, *events: Any) -> None:
        """The events in one read, as a network read often delivers the end of a stream."""
        data = [event if isinstance(event, str) else json.dumps(event) for event in events]
        self._send.send_nowait("".join(f"data: {d}\n\n" for d in data).encode())

    def end(self) -> None:
        self._send.send_nowait(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._receive:
            if part is None:
                return
            yield part

    async def aclose(self) -> None:
        self.closed.set()
        self._send.close()
        self._receive.close()


@dataclass
class Client:
    """The ASGI client side: `send` keeps every message; `receive` answers a disconnect once told to."""

    messages: list[Message] = field(default_factory=list)
    gone: anyio.Event = field(default_factory=anyio.Event)
    wrote: anyio.Event = field(default_factory=anyio.Event)
    fails_on: bytes | None = None  # a body holding these bytes fails to send, as on a reset socket
    stalls_on: bytes | None = None  # a body holding these bytes is never taken: a reader that stopped reading

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.fails_on is not None and self.fails_on in message.get("body", b""):
            raise OSError("connection reset by peer")
        if self.stalls_on is not None and self.stalls_on in message.get("body", b""):
            await anyio.Event().wait()
        self.messages.append(message)
        self.wrote.set()
        self.wrote = anyio.Event()

    async def wait_for(self, text: str) -> None:
        while text not in self.body:
            await self.wrote.wait()

    @property
    def status(self) -> int:
        return int(next(m["status"] for m in self.messages if m["type"] == "http.response.start"))

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return {k.decode(): v.decode() for k, v in start["headers"]}

    @property
    def body(self) -> str:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body").decode()

    @property
    def closed(self) -> bool:
        return any(m["type"] == "http.response.body" and not m.get("more_body") for m in self.messages)


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "up-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


@dataclass
class Run:
    stream: RelayStream
    body: UpstreamBody
    client: Client
    clock: FakeClock
    cancel: CancelSignal
    ended: list[StreamOutcome]

    @property
    def outcome(self) -> StreamOutcome:
        [outcome] = self.ended  # finalized exactly once
        return outcome


def relay(
    test: Callable[[Run], Any],
    *,
    framing: Framing | None = None,
    stream: bool = True,
    deadline: float | None = None,
    settings: Settings = SETTINGS,
    include_usage: bool = False,
    budget: BudgetGuard | None = None,
) -> Run:
    """Run one stream to its end while `test` drives it; returns what happened."""
    body = UpstreamBody()
    client, clock, cancel, ended = Client(), FakeClock(), CancelSignal(), []
    chat: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    if include_usage:
        chat["stream_options"] = {"include_usage": True}
    ctx = RequestContext(
        request_id="req_1",
        key=ApiKey(key_id="rk_1", name="t"),
        chat=(parsed := ChatRequest.model_validate(chat)),
        prompt=Prompt.of(parsed),
        mode="sse",
        started_at=T0,
        started_epoch=1.7e9,
        deadline=deadline,
        ticket=Ticket(headers={"x-ratelimit-limit-requests": "10"}),
    )

    async def on_end(outcome: StreamOutcome) -> None:
        ended.append(outcome)

    async def main() -> Run:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
        async with httpx.AsyncClient(transport=transport, base_url="http://upstream/v1") as http:
            response = await http.send(http.build_request("POST", "/chat/completions"), stream=True)
            opened = OpenedStream(response, OpenAIDecoder())
            response_stream = RelayStream(
                ctx,
                opened,
                framing=framing,
                cancel=cancel,
                on_end=on_end,
                pricer=PriceTable.load(),
                settings=settings,
                clock=clock,
                budget=budget,
            )
            run = Run(response_stream, body, client, clock, cancel, ended)
            with anyio.fail_after(10):  # a safety net only: every wait below is for an event
                async with anyio.create_task_group() as tg:
                    tg.start_soon(response_stream, {"type": "http"}, client.receive, client.send)
                    await test(run)
            await body.aclose()  # the memory streams, when the relay did not close them (a failing test)
            return run

    return anyio.run(main)


SSE = SSEFraming()
NDJSON = NDJSONFraming()


# --- normal ends -----------------------------------------------------------------------------------------------
def test_a_finished_stream_is_relayed_with_its_ids_rewritten_and_done() -> None:
    async def drive(run: Run) -> None:
        run.body.feed(chunk("Hel"), chunk("lo"), chunk(finish="stop"), "[DONE]")
        run.body.end()

    run = relay(drive, framing=SSE)
    events = [e.removeprefix("data: ") for e in run.client.body.split("\n\n") if e.startswith("data: ")]
    assert [json.loads(e)["id"] for e in events[:-1]] == ["req_1"] * 3 and events[-1] == "[DONE]"
    assert run.client.status == 200 and run.client.headers["x-ratelimit-limit-requests"] == "10"
    assert run.client.headers["content-type"] == "text/event-stream" and run.client.closed
    assert run.outcome.reason is TerminationReason.STOP and run.outcome.finish_reason == "stop"
    assert run.outcome.usage.completion_tokens == 2 and run.outcome.usage.estimated
    assert run.body.closed.is_set()


def test_the_flush_nudge_travels_in_each_chunk_s_own_message() -> None:
    async def drive(run: Run) -> None:
        run.body.feed(chunk("Hel"), chunk("lo"), chunk(finish="stop"), "[DONE]")
        run.body.end()

    # GIVEN the flush nudge on WHEN a stream is relayed
    run = relay(drive, framing=SSE, settings=SETTINGS.model_copy(update={"flush_nudge": True}))
    # THEN each chunk is one body message: its frame, then the nudge's blank line; the terminal frame has none
    bodies = [m["body"] for m in run.client.messages if m["type"] == "http.response.body" and m["body"]]
    assert len(bodies) == 4
    assert all(b.startswith(b"data: {") and b.endswith(b"\n\n\n") for b in bodies[:3])
    assert bodies[3] == b"data: [DONE]\n\n"
    assert run.outcome.reason is TerminationReason.STOP


def test_ndjson_ends_with_the_summary_line() -> None:
    async def drive(run: Run) -> None:
        run.body.feed(chunk("a"), chunk(finish="length"), chunk(usage={"prompt_tokens": 3, "completion_tokens": 1}))
        run.body.end()

    run = relay(drive, framing=NDJSON)
    lines = [json.loads(line) for line in run.client.body.splitlines() if line.strip()]
    summary = lines[-1]
    assert summary["object"] == "relay.summary" and summary["termination_reason"] == "length"
    assert summary["usage"]["completion_tokens"] == 1 and summary["usage"]["estimated"] is False
    assert all("usage" not in line for line in lines[:-1])  # the client did not ask for usage chunks
    assert run.outcome.reason is TerminationReason.LENGTH


def test_an_upstream_that_closes_without_a_finish_reason_is_incomplete() -> None:
    async def drive(run: Run) -> None:
        run.body.feed(chunk("a"))
        run.body.end()

    run = relay(drive, framing=SSE)
    error = json.loads(run.client.body.split("\n\n")[-2].removeprefix("data: "))["error"]
    assert error["code"] == "incomplete" and run.outcome.reason is TerminationReason.INCOMPLETE


def test_a_malformed_event_is_an_upstream_error_and_closes_the_upstream() -> None:
    async def drive(run: Run) -> None:
        run.body.feed(chunk("a"), "{not json")

    run = relay(drive, framing=NDJSON)
    assert json.loads(run.client.body.splitlines()[-1])["error"]["code"] == "upstream_error"
    assert run.outcome.reason is TerminationReason.UPSTREAM_ERROR and run.body.closed.is_set()


# --- cancel --------------------------------------------------------------------------------------------------------
def test_a_client_disconnect_closes_the_upstream_at_once() -> None:
    async def drive(run: Run) -> None:
        run.body.feed(chunk("a"))
        await run.client.wait_for('"a"')
        run.client.gone.set()
        await run.body.closed.wait()  # without the upstream ever ending

    run = relay(drive, framing=SSE)
    assert run.outcome.reason is TerminationReason.CLIENT_CANCELLED and run.outcome.cancel_source == "disconnect"
    assert "[DONE]" not in run.client.body  # nothing more is written to a client that left


def test_a_client_whose_socket_fails_is_a_disconnect() -> None:
    async def drive(run: Run) -> None:
        run.client.fails_on = b"boom"  # what uvicorn's send does once the socket is gone
        run.body.feed(chunk("boom"))
        await run.body.closed.wait()

    run = relay(drive, framing=SSE)
    assert run.outcome.reason is TerminationReason.CLIENT_CANCELLED and run.outcome.cancel_source == "disconnect"


def test_an_explicit_cancel_ends_the_stream_with_its_latency_from_the_call() -> None:
    async def drive(run: Run) -> None:
        run.body.feed(chunk("a"))
        await run.client.wait_for('"a"')
        run.cancel.set(run.clock.now())
        await run.body.closed.wait()

    run = relay(drive, framing=NDJSON)
    summary = json.loads(run.client.body.splitlines()[-1])
    assert summary["termination_reason"] == "client_cancelled" and run.client.closed
    assert run.outcome.cancel_source == "cancel_call" and run.outcome.cancel_latency_s == 0


# --- timers ------------------------------------------------------------------------------------------------------
def test_no_first_token_in_time_is_an_upstream_timeout() -> None:
    async def drive(run: Run) -> None:
        await run.client.wait_for("")  # headers out
        run.clock.advance(59)
        run.body.feed(chunk())  # a role-only chunk is not a token
        run.clock.advance(1)
        await run.body.closed.wait()

    run = relay(drive, framing=SSE)
    error = json.loads(run.client.body.split("\n\n")[-2].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_timeout" and "No first token within 60s" in error["message"]
    assert run.outcome.reason is TerminationReason.UPSTREAM_TIMEOUT


def test_an_upstream_silent_for_the_idle_timeout_after_the_first_token_times_out() -> None:
    async def drive(run: Run) -> None:
        run.body.feed(chunk("a"))
        await run.client.wait_for('"a"')
        run.clock.advance(19)
        assert not run.body.closed.is_set()
        run.clock.advance(1)
        await run.body.closed.wait()

    run = relay(drive, framing=NDJSON, settings=SETTINGS.model_copy(update={"heartbeat_interval_s": 100}))
    assert json.loads(run.client.body.splitlines()[-1])["error"]["message"] == "No upstream bytes for 20s."
    assert run.outcome.reason is TerminationReason.UPSTREAM_TIMEOUT


def test_the_deadline_ends_the_stream_cleanly_first() -> None:
    async def drive(run: Run) -> None:
        run.body.feed(chunk("a"))
        await run.client.wait_for('"a"')
        run.clock.advance(10)
        await run.body.closed.wait()

    run = relay(drive, framing=SSE, deadline=T0 + 10)
    error = json.loads(run.client.body.split("\n\n")[-2].removeprefix("data: "))["error"]
    assert error["code"] == "deadline" and run.outcome.reason is TerminationReason.DEADLINE and run.client.closed


def test_at_the_deadline_a_stalled_reader_gets_the_frame_and_the_unread_remainder_is_counted() -> None:
    # GIVEN a reader that stops taking the stream at "b", while the upstream has sent all of its answer
    async def drive(run: Run) -> None:
        run.client.stalls_on = b'"b"'
        run.body.feed(chunk("a"), chunk("b"), chunk("c"), chunk(finish="stop"))
        run.body.feed(chunk(usage={"prompt_tokens": 3, "completion_tokens": 3}), "[DONE]")
        run.body.end()
        await run.client.wait_for('"a"')
        # WHEN the deadline comes
        run.clock.advance(10)
        await run.body.closed.wait()

    run = relay(drive, framing=SSE, deadline=T0 + 10)
    # THEN the reader still gets the deadline frame (nothing after "a" was relayed)
    error = json.loads(run.client.body.split("\n\n")[-2].removeprefix("data: "))["error"]
    assert error["code"] == "deadline" and '"c"' not in run.client.body and run.client.closed
    # AND the record counts what the upstream reported for the whole answer, not just what was relayed
    usage = run.outcome.usage
    assert run.outcome.reason is TerminationReason.DEADLINE
    assert (usage.completion_tokens, usage.estimated, usage.lower_bound) == (3, False, False)


def test_at_the_deadline_what_was_decoded_but_not_relayed_is_counted_too() -> None:
    # GIVEN an upstream whose whole answer, its finish and its usage arrive in one read, and a reader that stops
    # taking the stream at "b": the pump stops with "c", the finish and the usage decoded but not relayed
    async def drive(run: Run) -> None:
        run.client.stalls_on = b'"b"'
        usage = {"prompt_tokens": 3, "completion_tokens": 30}
        run.body.feed_together(chunk("a"), chunk("b"), chunk("c"), chunk(finish="stop"), chunk(usage=usage), "[DONE]")
        run.body.end()
        await run.client.wait_for('"a"')
        # WHEN the deadline comes
        run.clock.advance(10)
        await run.body.closed.wait()

    run = relay(drive, framing=SSE, deadline=T0 + 10)
    # THEN the record has the upstream's own count of the whole answer, not an estimate of what was relayed
    usage = run.outcome.usage
    assert run.outcome.reason is TerminationReason.DEADLINE
    assert (usage.completion_tokens, usage.estimated, usage.lower_bound) == (30, False, False)


class BreakingDecoder(OpenAIDecoder):
    """A decoder with a bug that shows on what the upstream sends after the deadline."""

    def feed(self, raw: bytes) -> list[Any]:
        if b'"late"' in raw:
            raise RuntimeError("decoder bug")
        return super().feed(raw)


@pytest.mark.parametrize(
    ("remainder", "decoder"),
    [
        (chunk("late"), BreakingDecoder),  # the decoder fails on it
        ({"choices": 1}, OpenAIDecoder),  # the meter cannot read it
    ],
)
def test_a_remainder_that_cannot_be_counted_still_finalizes_the_request(
    remainder: dict[str, Any], decoder: type[OpenAIDecoder]
) -> None:
    # GIVEN an upstream whose remainder, after the deadline, cannot be counted
    async def drive(run: Run) -> None:
        run.stream._decoder = decoder()
        run.client.stalls_on = b'"b"'
        run.body.feed(chunk("a"), chunk("b"))
        await run.client.wait_for('"a"')
        run.body.feed(remainder)
        run.clock.advance(10)
        await run.body.closed.wait()

    # THEN the request is finalized once, as a lower bound (what was counted stands)
    run = relay(drive, framing=SSE, deadline=T0 + 10)
    assert run.outcome.reason is TerminationReason.DEADLINE and run.outcome.usage.lower_bound


def test_at_the_deadline_an_upstream_still_generating_is_counted_as_a_lower_bound() -> None:
    async def drive(run: Run) -> None:
        run.client.stalls_on = b'"b"'
        run.body.feed(chunk("a"), chunk("b"), chunk("c"))  # and then nothing: it is still generating
        await run.client.wait_for('"a"')
        run.clock.advance(10)
        await run.body.closed.wait()

    run = relay(drive, framing=NDJSON, deadline=T0 + 10)
    assert json.loads(run.client.body.splitlines()[-1])["error"]["code"] == "deadline"
    usage = run.outcome.usage
    assert (usage.completion_tokens, usage.estimated, usage.lower_bound, usage.source) == (3, True, True, "lower_bound")


@pytest.mark.parametrize(("framing", "beat"), [(SSE, ": ping\n\n"), (NDJSON, "\n")])
def test_heartbeats_keep_a_waiting_client_company(framing: Framing, beat: str) -> None:
    async def drive(run: Run) -> None:
        await run.client.wait_for("")
        run.clock.advance(15)
        await run.client.wait_for(beat)
        run.clock.advance(15)
        while run.client.body.count(beat) < 2:
            await run.client.wrote.wait()
        run.body.feed(chunk("a"), chunk(finish="stop"))
        run.body.end()

    run = relay(drive, framing=framing)
    assert run.client.body.startswith(beat * 2) and run.outcome.reason is TerminationReason.STOP


# --- stream: false -----------------------------------------------------------------------------------------------
def test_a_buffered_answer_is_one_completion() -> None:
    async def drive(run: Run) -> None:
        run.body.feed(chunk("Hel"), chunk("lo"), chunk(finish="stop"), "[DONE]")
        run.body.end()

    run = relay(drive, stream=False)
    completion = json.loads(run.client.body)
    assert run.client.status == 200 and completion["object"] == "chat.completion" and completion["id"] == "req_1"
    assert completion["choices"][0]["message"]["content"] == "Hello"
    assert run.client.headers["x-relay-cost-usd"] == format(run.outcome.cost_usd, "f")


def test_a_buffered_answer_that_fails_gets_its_status_and_error() -> None:
    async def drive(run: Run) -> None:
        run.body.feed(chunk("a"))
        run.body.end()

    run = relay(drive, stream=False)
    assert run.client.status == 502 and json.loads(run.client.body)["error"]["code"] == "incomplete"

"""One relayed stream as an ASGI response: the pump moves upstream events to the client while watchers look
for a client disconnect, an explicit cancel, the first-token and idle timeouts and the Lambda deadline.
Whichever ends the stream first names its termination reason; then the upstream is closed at once, a
terminal frame is written, and `on_end` (the pipeline's finalization) runs before the response body closes.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .aggregate import CompletionAggregator
from .apis.base import Api
from .apis.chat import ChatApi
from .cancel_signal import CancelSignal
from .clock import MONOTONIC, Clock
from .encoding import Framing, error_body, summary_body
from .json_text import dumps
from .limits.extend import BudgetGuard, tokens_in
from .metering import StreamMeter
from .outcome import Ending, RequestContext, StreamOutcome, outcome_of
from .pricing import Pricer
from .settings import Settings
from .termination import ERROR_CODE_STATUS, HTTP_STATUS, TerminationReason, reason_from_finish
from .upstreams.base import Decoded, Ended, Failed
from .upstreams.http import OpenedStream
from .validation import INVALID_OUTPUT, answer_check

if TYPE_CHECKING:
    from .leases import Lease
    from .sanitize.gate import OutputGate

logger = logging.getLogger(__name__)

CLIENT_WRITE_TIMEOUT_S = 2.0  # longest wait for a client to take the terminal frame before finalizing anyway
HARD_DEADLINE_SLACK_S = 0.5  # at the deadline, what is left of the margin minus this goes to the terminal frame
REMAINDER_MAX_BYTES = 8 * 1024 * 1024  # at the deadline, upstream bytes read (not relayed) to count what it billed
REMAINDER_IDLE_S = 0.25  # ... until it sends nothing for this long (it is still generating: we stop it)
TAIL_JUDGE_MAX_S = 3.0  # at the end, the longest the gate may take to judge what it holds (a guardrail call)
REMAINDER_MAX_S = 0.5  # ... and for this long at most: a model still generating is closed, not listened to
OnEnd = Callable[[StreamOutcome], Awaitable[None]]
# Endings where the upstream finished the answer itself: the sanitizer judges its tail as complete text.
_FINISHED = frozenset(
    {
        TerminationReason.STOP,
        TerminationReason.LENGTH,
        TerminationReason.TOOL_CALLS,
        TerminationReason.CONTENT_FILTER,
    }
)


class _ClientGone(Exception):
    pass


class RelayStream(Response):
    """ASGI response for an admitted request whose upstream stream is already open (status 2xx). A Starlette
    `Response` only so that FastAPI passes it through; it writes its own messages."""

    def __init__(
        self,
        ctx: RequestContext,
        opened: OpenedStream,
        *,
        framing: Framing | None,
        cancel: CancelSignal,
        api: Api | None = None,
        on_end: OnEnd,
        pricer: Pricer,
        settings: Settings,
        clock: Clock = MONOTONIC,
        budget: BudgetGuard | None = None,
        gate: OutputGate | None = None,
        lease: Lease | None = None,
        timing: str = "",
    ) -> None:
        super().__init__()
        self._timing = timing  # the Server-Timing header (durations.server_timing), "" for none
        self._lease = lease  # None: no lease to stay within (a test's stream)
        self.ctx = ctx
        self._opened = opened
        self._framing = framing  # None: answer one JSON body (stream: false)
        self._api = api or ChatApi()  # the shape of the `stream: false` body and of an error answered whole
        self._cancel = cancel
        self._on_end = on_end
        self._pricer = pricer
        self._settings = settings
        self._clock = clock
        self.meter = StreamMeter(started_at=ctx.started_at)
        self._aggregator = CompletionAggregator() if framing is None else None
        self._send: Send | None = None
        self._raw_chunks: AsyncIterator[bytes] = opened.response.aiter_raw()
        self._last_write = ctx.started_at
        self._reading_since: float | None = None  # when the pump began waiting for upstream bytes
        self._pump_scope: anyio.CancelScope | None = None
        self._decoder = opened.decoder  # the pump's, kept: the count of the remainder at the deadline goes on from it
        # Decoded items not handled yet: one read can decode several (a finish, the usage, the end), and the deadline
        # may stop the pump between them; the count of the remainder starts with these.
        self._pending: deque[Decoded] = deque()
        self._ending: Ending | None = None
        self._client_gone = False
        self._budget = budget  # None: no budget reservation to keep within
        self._gate = gate  # None: the compliance gate is off for this request's output
        # A gate that may block answers 400 while no byte has been sent: the response starts with the first frame
        # that carries text (or a heartbeat); frames before it (the role chunk) wait in `_early`.
        self._defer_start = gate is not None and gate.blocks
        self._started = False
        self._early: list[bytes] = []
        self._answered_whole = False  # the response was one error body (a block before the first byte)
        self._template: dict[str, Any] | None = None  # the last upstream chunk: the shape of the gate's flushes
        self._tail: list[dict[str, Any]] = []  # what the gate released at the end, before the terminal frame
        self._check = answer_check(ctx.chat)  # None: the request asks nothing of its answer to be checked

    # --- ASGI ---------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Relay, then always finish: close the upstream, write the terminal frame, finalize, close the body,
        whatever happened before (client gone before the headers, a failure in the relay itself)."""
        self._send = send
        async with anyio.create_task_group() as gate_tasks:  # the guardrail's judging outlives the pump
            if self._gate is not None:
                self._gate.start(gate_tasks)
            if self._budget is not None:  # here, not beside the pump: a pending extension must not delay the end
                self._budget.start(gate_tasks)
            try:
                if self._framing is not None and not self._defer_start:
                    await self._start(200, self._framing.media_type)
                await self._relay(receive)
            except _ClientGone:
                self._conclude(TerminationReason.CLIENT_CANCELLED, source="disconnect")
            except Exception:
                logger.exception("relay failed for request %s", self.ctx.request_id)
                self._conclude(TerminationReason.UPSTREAM_ERROR, "The relay failed while streaming.")
            finally:
                with anyio.CancelScope(shield=True):
                    await self._finish()
                gate_tasks.cancel_scope.cancel()

    async def _relay(self, receive: Receive) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_disconnect, receive)
            tg.start_soon(self._watch_cancel)
            tg.start_soon(self._watch_timers)
            if self._lease is not None:
                tg.start_soon(self._watch_lease, self._lease)
            if self._framing is not None:
                tg.start_soon(self._heartbeat)
            if self._gate is not None:
                tg.start_soon(self._watch_gate, self._gate)
            with anyio.CancelScope() as pump_scope:
                self._pump_scope = pump_scope
                await self._pump()
            tg.cancel_scope.cancel()

    async def _finish(self) -> None:
        ending = self._enforced(await self._judge_tail(self._ending or Ending(TerminationReason.INCOMPLETE)))
        if ending.reason is TerminationReason.DEADLINE and self.ctx.deadline is not None:
            await self._finish_at_deadline(ending, self.ctx.deadline + self._settings.deadline_margin_s)
            return
        ended_well = (
            not ending.reason.is_failure and ending.reason is not TerminationReason.CLIENT_CANCELLED and not ending.code
        )
        if not ended_well:
            await self._close_upstream()  # at once: cancellation latency is measured to here
        outcome = self._outcome(ending)
        if self._framing is not None:
            with anyio.move_on_after(CLIENT_WRITE_TIMEOUT_S):  # a client that stopped reading cannot hold us
                await self._write_terminal(self._framing, outcome)
        if ended_well:
            await self._drain()
            await self._close_upstream()
        await self._finalize(outcome)
        with anyio.move_on_after(CLIENT_WRITE_TIMEOUT_S):
            await self._close_body(outcome)

    async def _finish_at_deadline(self, ending: Ending, hard_deadline: float) -> None:
        """The deadline ending, with what is left of the margin: the terminal frame may wait for a slow reader's
        backlog to drain until just before Lambda's own deadline, while the upstream's unread remainder is read
        (not relayed) and counted, the upstream closed and the request finalized."""
        write_by = hard_deadline - HARD_DEADLINE_SLACK_S
        outcome = self._outcome(ending)
        async with anyio.create_task_group() as tg:
            if self._framing is not None:
                tg.start_soon(self._write_terminal_by, self._framing, outcome, write_by)
            try:
                complete = await self._count_remainder(min(write_by, self._clock.now() + REMAINDER_MAX_S))
            except Exception:  # a chunk the meter cannot read: what was counted stands, as a lower bound
                logger.exception("counting the remainder failed for %s", self.ctx.request_id)
                complete = False
            await self._close_upstream()
            outcome = self._outcome(ending)
            if not complete:
                outcome = replace(outcome, usage=replace(outcome.usage, lower_bound=True))
            await self._finalize(outcome)
        with anyio.move_on_after(max(0.0, write_by - self._clock.now())):
            await self._close_body(outcome)

    async def _write_terminal_by(self, framing: Framing, outcome: StreamOutcome, write_by: float) -> None:
        with anyio.move_on_after(max(0.0, write_by - self._clock.now())):
            await self._write_terminal(framing, outcome)

    async def _count_remainder(self, read_by: float) -> bool:
        """Read what the upstream sent past the last relayed event, without relaying it, so the record counts what
        the provider bills; bounded in bytes and time. True when nothing the upstream sent went uncounted."""
        if self._reading_since is not None:
            return True  # stopped while waiting for upstream bytes: everything sent was read (and the read is gone)
        if self._observe_unrelayed(self._pending):
            return True
        read = 0
        with anyio.move_on_after(max(0.0, read_by - self._clock.now())), contextlib.suppress(httpx.HTTPError):
            while read < REMAINDER_MAX_BYTES:
                with anyio.move_on_after(REMAINDER_IDLE_S):
                    raw = await anext(self._raw_chunks, None)
                    if raw is None:
                        return True
                    read += len(raw)
                    if self._observe_unrelayed(self._decoder.feed(raw)):
                        return True
                    continue
                return False  # idle: still generating, and stopped now
        return False

    def _observe_unrelayed(self, items: Iterable[Decoded]) -> bool:
        """Meter decoded items that will not be relayed; True at the upstream's end (or its error): nothing more
        will be billed."""
        for item in items:
            if not isinstance(item, dict):
                return True
            self.meter.observe(item, self._clock.now())
        return False

    async def _finalize(self, outcome: StreamOutcome) -> None:
        """The pipeline's finalization, before the body closes; its failure is logged, never the client's."""
        try:
            if self._budget is not None:
                await self._budget.settled()  # settlement swaps the whole reservation: the pending write's too
            await self._on_end(outcome)
        except Exception:
            logger.exception("finalize failed for request %s", self.ctx.request_id)

    def _outcome(self, ending: Ending) -> StreamOutcome:
        return outcome_of(
            self.ctx,
            ending,
            self.meter,
            ended_at=self._clock.now(),
            answered=True,
            pricer=self._pricer,
            retries=self._opened.retries,
            upstream_errors=self._opened.status_errors,
            attempts_maybe_billed=self._opened.maybe_billed,
            upstream=self._opened.upstream,
            billed_as=self._opened.billed_as,
            redactions=self._gate.counts if self._gate is not None else None,
            guardrail_action=self._gate.guardrail_action if self._gate is not None else None,
            holdback_chars=self._gate.max_held if self._gate is not None else 0,
            blocked=block.types if self._gate is not None and (block := self._gate.block) else (),
            validation=self._check.verdict if self._check is not None else None,
            repeated_events=getattr(self._decoder, "repeats", 0),  # the decoders of numbered events drop resent ones
        )

    async def _close_body(self, outcome: StreamOutcome) -> None:
        """The last message: the one JSON body (`stream: false`), or the end of the streamed body."""
        if self._framing is None:
            await self._send_json(outcome)
        elif not self._client_gone and not self._answered_whole:
            with contextlib.suppress(_ClientGone):
                await self._raw_send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _close_upstream(self) -> None:
        """Close the upstream response (the connection too, unless it was read to its end); a failure to
        close must not keep finalization from running."""
        try:
            await self._opened.response.aclose()
        except Exception:
            logger.warning("closing the upstream response failed for %s", self.ctx.request_id, exc_info=True)

    # --- the pump -----------------------------------------------------------------------------------
    async def _pump(self) -> None:
        decoder = self._decoder
        try:
            while True:
                self._reading_since = self._clock.now()  # the idle timeout runs only while we wait for bytes
                raw = await anext(self._raw_chunks, None)
                self._reading_since = None
                if raw is None:
                    break
                if not await self._handle_all(decoder.feed(raw), self._clock.now()):
                    return
            if not await self._handle_all(decoder.close(), self._clock.now()):
                return
            self._conclude_finished()
        except httpx.ReadTimeout:
            self._conclude(TerminationReason.UPSTREAM_TIMEOUT, self._idle_message())
        except httpx.HTTPError as exc:
            self._conclude(TerminationReason.UPSTREAM_ERROR, f"Upstream stream failed ({type(exc).__name__}).")
        except _ClientGone:
            self._conclude(TerminationReason.CLIENT_CANCELLED, source="disconnect")
        except Exception:
            logger.exception("relay pump failed for request %s", self.ctx.request_id)
            self._conclude(TerminationReason.UPSTREAM_ERROR, "The relay failed while streaming.")

    async def _handle_all(self, items: list[Decoded], now: float) -> bool:
        """Relay decoded items in order, each taken off `_pending` as its handling starts; False once one ended the
        stream."""
        pending = self._pending
        pending.extend(items)
        while pending:
            if not await self._handle(pending.popleft(), now):
                pending.clear()  # after the end (or an error) nothing more is relayed or counted
                return False
        return True

    async def _handle(self, item: Decoded, now: float) -> bool:
        """Relay one decoded upstream item; False when the stream has ended."""
        if isinstance(item, Ended):
            self._conclude_finished()
            return False
        if isinstance(item, Failed):
            self._conclude(TerminationReason.UPSTREAM_ERROR, item.message)
            return False
        chunk = item
        if self._lease is not None and self._lease.lapsed():  # checked per chunk: a resumed process relays none
            self._observe_unrelayed([chunk, *self._pending])  # generated, so billed: counted, never sent
            self._conclude(TerminationReason.LEDGER_UNAVAILABLE, _lease_message(self._lease))
            return False
        if self._budget is not None and not await self._within_budget(chunk):
            return False
        if not self.meter.observe(chunk, now):
            return True
        if self._gate is not None:  # after the meter: billing counts what the upstream generated
            return await self._handle_gated(self._gate, chunk)
        await self._check_answer(chunk)
        if self._aggregator is not None:
            self._aggregator.add(chunk)
            return True
        out = self._for_client(chunk)
        if out is not None and self._framing is not None:
            await self._write(self._framing.chunk(out), nudge=self._settings.flush_nudge)
        return True

    async def _handle_gated(self, gate: OutputGate, chunk: dict[str, Any]) -> bool:
        """Relay what the compliance gate releases of one chunk; False once it blocked (the stream ends)."""
        self._template = chunk
        for out in await gate.chunk(chunk):
            await self._emit(out)
        if gate.block is not None:
            self._conclude_blocked(gate)
            return False
        return True

    async def _emit(self, chunk: dict[str, Any]) -> None:
        """One sanitized chunk to the client (or into the `stream: false` answer)."""
        await self._check_answer(chunk)
        if self._aggregator is not None:
            self._aggregator.add(chunk)
            return
        out = self._for_client(chunk)
        if out is None or self._framing is None:
            return
        assert self._gate is not None
        if out.get("usage") or any(isinstance(c, dict) and c.get("finish_reason") for c in out.get("choices") or ()):
            out["redactions"] = dict(self._gate.counts)  # the audit so far: final once every choice finished
        frame = self._framing.chunk(out)
        if not self._started and not _carries_text(out):
            self._early.append(frame)  # the role chunk waits for the first text: a block before it is still a 400
            return
        await self._write(frame, nudge=self._settings.flush_nudge)

    async def _judge_tail(self, ending: Ending) -> Ending:
        """At the end, whatever ended the stream: the gate's held text is judged and kept for the terminal frame
        (within a bound: a guardrail that does not answer in time leaves it withheld); a block found there ends an
        answer that was ending well as `content_filter` instead."""
        gate = self._gate
        if gate is None or self._client_gone:
            return ending
        was_blocked = gate.block is not None
        with anyio.move_on_after(TAIL_JUDGE_MAX_S):
            self._tail = await gate.finish(self._template, complete=ending.reason in _FINISHED)
        if gate.block is not None and not was_blocked:
            self._conclude_blocked(gate, override=True)
            return self._ending or ending
        return ending

    async def _check_answer(self, chunk: dict[str, Any]) -> None:
        """The assembled answer's check: a chunk that finishes a choice is judged before it goes, and carries the
        verdict so far (final once every choice finished)."""
        check = self._check
        if check is None or self._ending is not None or not check.add(chunk):
            return
        verdict = await check.judge()
        if verdict is not None:
            chunk["validation"] = verdict.as_json()

    def _enforced(self, ending: Ending) -> Ending:
        """`RELAY_VALIDATE=enforce`: an answer the upstream finished that failed its check ends with the terminal
        error `invalid_output` instead; its reason stays the upstream's (it was generated, and is billed)."""
        verdict = self._check.verdict if self._check is not None else None
        if verdict is None or verdict.valid or self._settings.output_validation != "enforce":
            return ending
        if ending.reason not in _FINISHED or ending.code is not None:
            return ending
        return replace(ending, error=verdict.message, code=INVALID_OUTPUT)

    def _conclude_blocked(self, gate: OutputGate, *, override: bool = False) -> None:
        block = gate.block
        assert block is not None
        if override and self._ending is not None:
            reason = self._ending.reason
            if reason.is_failure or reason is TerminationReason.CLIENT_CANCELLED:
                return  # the stream failed or was cancelled: that stays its reason; the held text is withheld
            self._ending = None
        self._conclude(TerminationReason.CONTENT_FILTER, block.message, code=block.code)

    async def _watch_gate(self, gate: OutputGate) -> None:
        """The guardrail's async mode judges behind the stream: its first intervention ends the stream at once."""
        await gate.wait_intervention()
        block = gate.block
        assert block is not None
        self._end(TerminationReason.CONTENT_FILTER, block.message, code=block.code)

    async def _within_budget(self, chunk: dict[str, Any]) -> bool:
        """Whether the chunk's tokens are reserved; if not (an extension was refused), the stream ends here: the
        chunk is not passed on, but it is counted, with what was decoded after it, since the upstream generated
        them and the provider bills them."""
        assert self._budget is not None
        tokens = tokens_in(chunk)  # as the meter counts the chunks relayed so far (`estimated_tokens`)
        if not tokens or await self._budget.allow(self.meter.estimated_tokens + tokens):
            return True
        self._observe_unrelayed([chunk, *self._pending])
        self._conclude(
            TerminationReason.BUDGET_EXCEEDED,
            "The key's budget cannot cover more of this answer; the stream was ended at the reserved tokens.",
        )
        return False

    async def _drain(self) -> None:
        """After a normal end, read the (normally empty) rest of the body so the keep-alive connection goes
        back to the pool instead of being closed; give up quickly if the upstream keeps it open."""
        with anyio.move_on_after(0.25), contextlib.suppress(httpx.HTTPError):
            async for _ in self._raw_chunks:
                pass

    def _for_client(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        if not self.ctx.chat.include_usage:
            if not chunk.get("choices") and chunk.get("usage"):
                return None
            chunk.pop("usage", None)
        chunk["id"] = self.ctx.request_id
        if self._opened.renamed:  # a rewrite: the client asked for its name, not the provider's (an alias stays one)
            chunk["model"] = self._opened.renamed
        return chunk

    # --- how it ends --------------------------------------------------------------------------------
    def _end(
        self, reason: TerminationReason, error: str | None = None, source: str | None = None, code: str | None = None
    ) -> None:
        """A watcher ends the stream: name the reason (first caller wins) and stop the pump at once."""
        self._conclude(reason, error, source, code)
        if self._pump_scope is not None:
            self._pump_scope.cancel()

    def _conclude_finished(self) -> None:
        """The upstream ended the stream: its finish_reason names the reason."""
        finish = self.meter.finish_reason
        reason = reason_from_finish(finish)
        error = f"Upstream ended the stream with finish_reason '{finish}'." if finish and reason.is_failure else None
        self._conclude(reason, error)

    def _conclude(
        self, reason: TerminationReason, error: str | None = None, source: str | None = None, code: str | None = None
    ) -> None:
        """Name the termination reason; the first caller wins. A cancel's latency runs from when it was
        asked for: the cancel call's arrival, or now for a disconnect."""
        if self._ending is not None:
            return
        started = None
        if source is not None:
            started = (self._cancel.requested_at if source == "cancel_call" else None) or self._clock.now()
        self._ending = Ending(reason, error, source, started, code)

    def _idle_message(self) -> str:
        return f"No upstream bytes for {self._settings.upstream_idle_timeout_s:g}s."

    # --- watchers -----------------------------------------------------------------------------------
    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._client_gone = True
                self._end(TerminationReason.CLIENT_CANCELLED, source="disconnect")
                return

    async def _watch_cancel(self) -> None:
        await self._cancel.event.wait()
        self._end(TerminationReason.CLIENT_CANCELLED, source="cancel_call")

    async def _watch_lease(self, lease: Lease) -> None:
        """A stream never outlives its lease: past it, a reconciler may settle the request as `lost` while the stream
        runs (its slot freed, its later tokens unrecorded). So it ends itself before the lease can expire unrenewed,
        and at once when a renewal finds the request settled already (the process was paused past its lease)."""
        await lease.wait_lapsed()
        self._end(TerminationReason.LEDGER_UNAVAILABLE, _lease_message(lease))

    async def _watch_timers(self) -> None:
        """The deadline; until the first token the first-token timeout, after it the idle timeout (the pump
        waited that long for upstream bytes). Wakes at the nearest of them, at least once per idle interval."""
        settings = self._settings
        first_token_by = self.ctx.started_at + settings.upstream_first_token_timeout_s
        deadline = self.ctx.deadline
        while True:
            now = self._clock.now()
            if deadline is not None and now >= deadline:
                self._end(TerminationReason.DEADLINE, "The relay's time limit was reached; the stream was ended.")
                return
            waiting_first = self.meter.first_token_at is None
            if waiting_first and now >= first_token_by:
                self._end(
                    TerminationReason.UPSTREAM_TIMEOUT,
                    f"No first token within {settings.upstream_first_token_timeout_s:g}s.",
                )
                return
            reading_since = self._reading_since
            idle_by = (now if reading_since is None else reading_since) + settings.upstream_idle_timeout_s
            if not waiting_first and now >= idle_by:
                self._end(TerminationReason.UPSTREAM_TIMEOUT, self._idle_message())
                return
            wake = min(t for t in (deadline, first_token_by if waiting_first else None, idle_by) if t is not None)
            await self._clock.sleep_until(wake)

    async def _heartbeat(self) -> None:
        assert self._framing is not None
        interval = self._settings.heartbeat_interval_s
        while True:
            await self._clock.sleep_until(self._last_write + interval)
            if self._clock.now() - self._last_write >= interval:
                try:
                    await self._write(self._framing.heartbeat)
                except _ClientGone:
                    self._end(TerminationReason.CLIENT_CANCELLED, source="disconnect")
                    return

    # --- output -------------------------------------------------------------------------------------
    async def _start(self, status: int, media_type: str, extra: dict[str, str] | None = None) -> None:
        self._started = True
        headers = {**(self.ctx.ticket.headers if self.ctx.ticket else {}), **(extra or {}), "content-type": media_type}
        if self._timing:
            headers["server-timing"] = self._timing
        if self._framing is not None:
            headers.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
        await self._raw_send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )

    async def _write(self, data: bytes, *, nudge: bool = False) -> None:
        """Write one whole frame per ASGI message. The pump and the heartbeat both write, with no lock: each
        frame is a single message, so a heartbeat can only ever fall between two frames, never inside one.
        The flush nudge travels in the frame's own message: the same bytes, one send (and one socket write)
        per chunk instead of two."""
        if self._client_gone:
            raise _ClientGone
        self._last_write = self._clock.now()
        if not self._started and self._framing is not None:
            await self._start(200, self._framing.media_type)
        if self._early:
            data = b"".join(self._early) + data
            self._early.clear()
        if nudge and self._framing is not None:
            data += self._framing.nudge
        await self._raw_send({"type": "http.response.body", "body": data, "more_body": True})

    async def _raw_send(self, message: Message) -> None:
        assert self._send is not None
        try:
            await self._send(message)
        except OSError as exc:
            self._client_gone = True
            raise _ClientGone from exc

    async def _write_terminal(self, framing: Framing, outcome: StreamOutcome) -> None:
        if self._client_gone:
            return
        status = ERROR_CODE_STATUS.get(outcome.error_code or "")
        if status is not None and not self._started:  # nothing sent yet: the refusal is the whole answer
            self._answered_whole = True
            with contextlib.suppress(_ClientGone):
                await self._send_error(status, outcome)
            return
        with contextlib.suppress(_ClientGone):
            await self._write_tail(framing, outcome)
        if outcome.is_error:
            frame = framing.error(error_body(self.ctx.request_id, outcome))
        else:
            sanitized = self._gate is not None
            frame = framing.end(summary_body(self.ctx.request_id, self.ctx.chat.model, outcome, sanitized=sanitized))
        with contextlib.suppress(_ClientGone):
            await self._write(frame)

    async def _write_tail(self, framing: Framing, outcome: StreamOutcome) -> None:
        """What the gate released at the end, then (a blocked answer) each choice's `content_filter` finish."""
        for chunk in self._tail:
            await self._emit(chunk)
        if outcome.error_code in (None, INVALID_OUTPUT) or self._template is None:
            return
        indexes = sorted({c.get("index", 0) for c in self._template.get("choices") or () if isinstance(c, dict)}) or [0]
        for index in indexes:
            finish = {"index": index, "delta": {}, "finish_reason": TerminationReason.CONTENT_FILTER.value}
            chunk = {k: self._template[k] for k in ("object", "created", "model") if k in self._template}
            await self._emit({**chunk, "choices": [finish]})

    async def _send_error(self, status: int, outcome: StreamOutcome) -> None:
        await self._start(status, "application/json")
        body = dumps(self._api.error(error_body(self.ctx.request_id, outcome), status)).encode()
        await self._raw_send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_json(self, outcome: StreamOutcome) -> None:
        """The one body of a `stream: false` answer: the assembled completion, or the error."""
        if self._client_gone:
            return
        for chunk in self._tail:
            await self._emit(chunk)
        status = ERROR_CODE_STATUS.get(outcome.error_code or "") or HTTP_STATUS.get(outcome.reason, 200)
        if status == 200:
            assert self._aggregator is not None
            ctx = self.ctx
            completion = self._aggregator.completion(
                ctx.request_id, ctx.chat.model, outcome.usage.as_openai(), int(ctx.started_epoch)
            )
            if outcome.validation is not None:
                completion["validation"] = outcome.validation.as_json()
            body = self._api.answer(completion)
        else:
            body = self._api.error(error_body(self.ctx.request_id, outcome), status)
        cost = outcome.cost_usd
        extra = {"x-relay-cost-usd": format(cost, "f")} if cost is not None else {}
        with contextlib.suppress(_ClientGone):
            await self._start(status, "application/json", extra)
            await self._raw_send({"type": "http.response.body", "body": dumps(body).encode(), "more_body": False})


def _lease_message(lease: Lease) -> str:
    """The terminal error's message of a stream its lease ended."""
    if lease.settled_elsewhere:
        return "The usage ledger settled this request while the relay was paused; the stream was ended."
    return (
        "This request's lease in the usage ledger could not be renewed in time (the ledger was unreachable, or the "
        "relay was paused); the stream was ended."
    )


def _carries_text(chunk: dict[str, Any]) -> bool:
    """Whether a chunk carries answer text (content or tool-call arguments), not only a role or an id."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        if delta.get("content") or delta.get("refusal") or delta.get("reasoning_content") or delta.get("tool_calls"):
            return True
        if choice.get("finish_reason") is not None:
            return True
    return False

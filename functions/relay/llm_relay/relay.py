"""One relayed stream as an ASGI response: pump upstream events to the client while watchers look for a
client disconnect, an explicit cancel, the first-token timeout and the Lambda deadline. Whichever ends the
stream first names its termination reason; then the upstream is closed at once, a terminal frame is
written, and finalization (usage, metrics, logs) runs before the response body closes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

from .aggregate import CompletionAggregator
from .encoding import Framing, dumps
from .metering import StreamMeter, Usage
from .outcome import Finalizer, RequestContext, StreamOutcome
from .settings import Settings
from .sse import SSELineTooLong, SSEParser
from .termination import TerminationReason, reason_from_finish
from .upstream import OpenedStream

logger = logging.getLogger(__name__)

Pricer = Callable[[str, Usage], Decimal | None]

CLIENT_WRITE_TIMEOUT_S = 2.0  # longest wait for a client to take the terminal frame before finalizing anyway

_ERROR_STATUS = {
    TerminationReason.UPSTREAM_ERROR: 502,
    TerminationReason.INCOMPLETE: 502,
    TerminationReason.UPSTREAM_TIMEOUT: 504,
    TerminationReason.DEADLINE: 504,
    TerminationReason.CLIENT_CANCELLED: 409,
}


class _ClientGone(Exception):
    pass


class RelayResponse:
    """ASGI response for an admitted request whose upstream stream is already open (status 2xx)."""

    def __init__(
        self,
        ctx: RequestContext,
        opened: OpenedStream,
        *,
        framing: Framing | None,
        cancel_event: anyio.Event,
        cancelled_at: Callable[[], float | None],
        finalizer: Finalizer,
        pricer: Pricer,
        settings: Settings,
        headers: dict[str, str],
    ) -> None:
        self.ctx = ctx
        self._opened = opened
        self._framing = framing  # None: answer one JSON body (stream: false)
        self._cancel_event = cancel_event
        self._cancelled_at = cancelled_at
        self._finalizer = finalizer
        self._pricer = pricer
        self._settings = settings
        self._headers = headers
        self.meter = StreamMeter(started_at=ctx.started_at)
        self._aggregator = CompletionAggregator() if framing is None else None
        self._send: Send | None = None
        self._include_usage = ctx.chat.include_usage
        self._raw_chunks: AsyncIterator[bytes] = opened.response.aiter_raw()
        self._last_write = ctx.started_at
        self._pump_scope: anyio.CancelScope | None = None
        self._reason: TerminationReason | None = None
        self._error: str | None = None
        self._cancel_source: str | None = None
        self._cancel_started: float | None = None
        self._client_gone = False

    # --- ASGI ---------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Relay, then always finish: close the upstream, write the terminal frame, finalize, close the body,
        whatever happened before (client gone before the headers, a failure in the relay itself)."""
        self._send = send
        try:
            if self._framing is not None:
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

    async def _relay(self, receive: Receive) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_disconnect, receive)
            tg.start_soon(self._watch_cancel)
            tg.start_soon(self._watch_timers)
            if self._framing is not None:
                tg.start_soon(self._heartbeat)
            with anyio.CancelScope() as pump_scope:
                self._pump_scope = pump_scope
                await self._pump()
            tg.cancel_scope.cancel()

    async def _finish(self) -> None:
        reason = self._reason or TerminationReason.INCOMPLETE
        ended_well = not reason.is_failure and reason is not TerminationReason.CLIENT_CANCELLED
        if not ended_well:
            await self._close_upstream()  # at once: cancellation latency is measured to here
        closed_at = time.monotonic()
        usage = self.meter.usage(self.ctx.chat.messages_as_dicts())
        outcome = StreamOutcome(
            reason=reason,
            usage=usage,
            ttft_s=self.meter.ttft_s,
            tpot_s=self.meter.tpot_s,
            duration_s=closed_at - self.ctx.started_at,
            chunks=self.meter.chunks,
            error=self._error,
            cancel_source=self._cancel_source,
            cancel_latency_s=None if self._cancel_started is None else closed_at - self._cancel_started,
            cost_usd=self._pricer(self.ctx.chat.model, usage),
        )
        cost = outcome.cost_usd
        if self._framing is not None:
            with anyio.move_on_after(CLIENT_WRITE_TIMEOUT_S):  # a client that stopped reading cannot hold us
                await self._write_terminal(outcome, cost)
        if ended_well:
            await self._drain()
            await self._close_upstream()
        try:
            await self._finalizer.finalize(self.ctx, outcome)
        except Exception:
            logger.exception("finalize failed for request %s", self.ctx.request_id)
        with anyio.move_on_after(CLIENT_WRITE_TIMEOUT_S):
            if self._framing is None:
                await self._send_json(outcome, cost)
            elif not self._client_gone:
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
        parser = SSEParser()
        idle = self._settings.upstream_idle_timeout_s
        try:
            while True:
                # Until the first token the first-token watcher bounds the wait; after it, the idle timeout.
                with anyio.fail_after(idle if self.meter.first_token_at is not None else None):
                    raw = await anext(self._raw_chunks, None)
                if raw is None:
                    break
                now = time.monotonic()
                for event in parser.feed(raw):
                    if not await self._handle(event.data, now):
                        return
            self._conclude_finished()
        except (TimeoutError, httpx.ReadTimeout):
            self._conclude(
                TerminationReason.UPSTREAM_TIMEOUT,
                f"No upstream bytes for {self._settings.upstream_idle_timeout_s:g}s.",
            )
        except httpx.HTTPError as exc:
            self._conclude(TerminationReason.UPSTREAM_ERROR, f"Upstream stream failed ({type(exc).__name__}).")
        except SSELineTooLong:
            self._conclude(TerminationReason.UPSTREAM_ERROR, "Upstream sent a malformed event (line too long).")
        except _ClientGone:
            self._conclude(TerminationReason.CLIENT_CANCELLED, source="disconnect")
        except Exception:
            logger.exception("relay pump failed for request %s", self.ctx.request_id)
            self._conclude(TerminationReason.UPSTREAM_ERROR, "The relay failed while streaming.")

    async def _handle(self, data: str, now: float) -> bool:
        """Relay one upstream event; False when the stream has ended."""
        if data == "[DONE]":
            self._conclude_finished()
            return False
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            self._conclude(TerminationReason.UPSTREAM_ERROR, "Upstream sent a malformed event.")
            return False
        if "error" in chunk and not chunk.get("choices"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else None
            self._conclude(TerminationReason.UPSTREAM_ERROR, f"Upstream error: {message or 'unknown'}")
            return False
        if not self.meter.observe(chunk, now):
            return True
        if self._aggregator is not None:
            self._aggregator.add(chunk)
            return True
        out = self._for_client(chunk)
        if out is not None and self._framing is not None:
            await self._write(self._framing.chunk(out), nudge=self._settings.flush_nudge)
        return True

    async def _drain(self) -> None:
        """After a normal end, read the (normally empty) rest of the body so the keep-alive connection goes
        back to the pool instead of being closed; give up quickly if the upstream keeps it open."""
        with anyio.move_on_after(0.25), contextlib.suppress(httpx.HTTPError):
            async for _ in self._raw_chunks:
                pass

    def _for_client(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        if not self._include_usage:
            if not chunk.get("choices") and chunk.get("usage"):
                return None
            chunk.pop("usage", None)
        chunk["id"] = self.ctx.request_id
        return chunk

    def _end(self, reason: TerminationReason, error: str | None = None, source: str | None = None) -> None:
        """A watcher ends the stream: name the reason (first caller wins) and stop the pump at once."""
        self._conclude(reason, error, source)
        if self._pump_scope is not None:
            self._pump_scope.cancel()

    def _conclude_finished(self) -> None:
        """The upstream ended the stream: its finish_reason names the reason."""
        finish = self.meter.finish_reason
        reason = reason_from_finish(finish)
        error = f"Upstream ended the stream with finish_reason '{finish}'." if finish and reason.is_failure else None
        self._conclude(reason, error)

    def _conclude(self, reason: TerminationReason, error: str | None = None, source: str | None = None) -> None:
        """Name the termination reason; the first caller wins."""
        if self._reason is None:
            self._reason = reason
            self._error = error
            if source is not None:
                self._cancel_source = source
                self._cancel_started = self._cancelled_at() if source == "cancel_call" else time.monotonic()
                self._cancel_started = self._cancel_started or time.monotonic()

    # --- watchers -----------------------------------------------------------------------------------
    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._client_gone = True
                self._end(TerminationReason.CLIENT_CANCELLED, source="disconnect")
                return

    async def _watch_cancel(self) -> None:
        await self._cancel_event.wait()
        self._end(TerminationReason.CLIENT_CANCELLED, source="cancel_call")

    async def _watch_timers(self) -> None:
        first_token_by = self.ctx.started_at + self._settings.upstream_first_token_timeout_s
        deadline = self.ctx.deadline
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._end(TerminationReason.DEADLINE, "The relay's time limit was reached; the stream was ended.")
                return
            waiting_first = self.meter.first_token_at is None
            if waiting_first and now >= first_token_by:
                self._end(
                    TerminationReason.UPSTREAM_TIMEOUT,
                    f"No first token within {self._settings.upstream_first_token_timeout_s:g}s.",
                )
                return
            wake = [t for t in (deadline, first_token_by if waiting_first else None) if t is not None]
            if not wake:
                return
            await anyio.sleep(max(0.0, min(wake) - now))

    async def _heartbeat(self) -> None:
        assert self._framing is not None
        interval = self._settings.heartbeat_interval_s
        while True:
            await anyio.sleep(max(0.0, self._last_write + interval - time.monotonic()))
            if time.monotonic() - self._last_write >= interval:
                try:
                    await self._write(self._framing.heartbeat)
                except _ClientGone:
                    self._end(TerminationReason.CLIENT_CANCELLED, source="disconnect")
                    return

    # --- output -------------------------------------------------------------------------------------
    async def _start(self, status: int, media_type: str, extra: dict[str, str] | None = None) -> None:
        headers = {**self._headers, **(extra or {}), "content-type": media_type}
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
        frame is a single message, so a heartbeat can only ever fall between two frames, never inside one."""
        if self._client_gone:
            raise _ClientGone
        self._last_write = time.monotonic()
        await self._raw_send({"type": "http.response.body", "body": data, "more_body": True})
        if nudge and self._framing is not None:
            await self._raw_send({"type": "http.response.body", "body": self._framing.nudge, "more_body": True})

    async def _raw_send(self, message: Message) -> None:
        assert self._send is not None
        try:
            await self._send(message)
        except OSError as exc:
            self._client_gone = True
            raise _ClientGone from exc

    async def _write_terminal(self, outcome: StreamOutcome, cost: Decimal | None) -> None:
        assert self._framing is not None
        if self._client_gone:
            return
        if outcome.reason.is_failure:
            frame = self._framing.error(self._error_body(outcome))
        else:
            frame = self._framing.end(self._summary(outcome, cost))
        with contextlib.suppress(_ClientGone):
            await self._write(frame)

    def _summary(self, outcome: StreamOutcome, cost: Decimal | None) -> dict[str, Any]:
        return {
            "object": "relay.summary",
            "id": self.ctx.request_id,
            "model": self.ctx.chat.model,
            "finish_reason": self.meter.finish_reason,
            "termination_reason": outcome.reason.value,
            "usage": {**outcome.usage.as_openai(), "estimated": outcome.usage.estimated},
            "cost_usd": None if cost is None else format(cost, "f"),
            "ttft_ms": _ms(outcome.ttft_s),
            "tpot_ms": _ms(outcome.tpot_s),
            "duration_ms": _ms(outcome.duration_s),
            "chunks": outcome.chunks,
        }

    def _error_body(self, outcome: StreamOutcome) -> dict[str, Any]:
        message = outcome.error or f"The stream ended without a finish_reason ({outcome.reason.value})."
        return {
            "error": {
                "message": message,
                "type": "upstream_error",
                "param": None,
                "code": outcome.reason.value,
                "request_id": self.ctx.request_id,
            }
        }

    async def _send_json(self, outcome: StreamOutcome, cost: Decimal | None) -> None:
        if self._client_gone:
            return
        if outcome.reason.is_failure or outcome.reason is TerminationReason.CLIENT_CANCELLED:
            status = _ERROR_STATUS[outcome.reason]
            body: dict[str, Any] = self._error_body(outcome)
            if outcome.reason is TerminationReason.CLIENT_CANCELLED:
                body["error"].update(type="invalid_request_error", message="The request was cancelled.")
        else:
            assert self._aggregator is not None
            status = 200
            body = self._aggregator.completion(
                self.ctx.request_id, self.ctx.chat.model, outcome.usage.as_openai(), int(self.ctx.started_epoch)
            )
        extra = {"x-relay-cost-usd": format(cost, "f")} if cost is not None else {}
        try:
            await self._start(status, "application/json", extra)
            await self._raw_send({"type": "http.response.body", "body": dumps(body).encode(), "more_body": False})
        except _ClientGone:
            pass


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)

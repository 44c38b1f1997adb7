"""Incremental Server-Sent Events parser (pure, no I/O).

Feed it bytes as they arrive, in any split; it returns the events completed so far. It follows the
WHATWG event-stream rules that matter for LLM streams: lines end in LF, CRLF or CR (a CRLF split across
two reads is one line end), `:` lines are comments (keep-alives), several `data:` lines join with LF, a
blank line dispatches, a single space after the colon is dropped, and an event with no data is not
dispatched. Decoding is UTF-8 on whole lines, so a multi-byte character split across reads is safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import SSELineTooLong

__all__ = ["MAX_LINE_BYTES", "SSEEvent", "SSELineTooLong", "SSEParser"]

MAX_LINE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None  # the last event ID (SSE keeps it across events that set none)
    id_given: bool = field(default=False, compare=False)  # whether this event set it with its own `id:` line


class SSEParser:
    """Stateful parser: `feed(bytes) -> list[SSEEvent]`, then `flush()` at end of stream."""

    __slots__ = ("_buffer", "_data", "_event", "_id", "_id_given", "_pending_cr", "_started", "comments")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._id_given = False
        self._started = False
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if (
            chunk[-2:] == b"\n\n"
            and chunk[:6] == b"data: "
            and self._started
            and not (self._buffer or self._data or self._event or self._id_given or self._pending_cr)
            and chunk.count(b"\n") == 2
            and b"\r" not in chunk
        ):  # one whole `data:` event and nothing else (how LLM providers send most of a stream): the rules below
            # come to this one event
            return [SSEEvent(data=chunk[6:-2].decode("utf-8", errors="replace"), id=self._id)]
        events: list[SSEEvent] = []
        if not chunk:
            return events
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        self._buffer += chunk
        if not self._started:  # the spec drops one leading UTF-8 byte order mark
            if len(self._buffer) < 3 and b"\xef\xbb\xbf".startswith(bytes(self._buffer)):
                return events
            self._started = True
            if self._buffer.startswith(b"\xef\xbb\xbf"):
                del self._buffer[:3]
        start = 0
        buf = self._buffer
        length = len(buf)
        while start < length:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, lf if lf != -1 else length)
            if cr != -1:
                end, nxt = cr, cr + 1
                if nxt < length:
                    if buf[nxt] == 0x0A:
                        nxt += 1
                else:
                    self._pending_cr = True
            elif lf != -1:
                end, nxt = lf, lf + 1
            else:
                break
            event = self._line(bytes(buf[start:end]))
            if event is not None:
                events.append(event)
            start = nxt
        del buf[:start]
        if len(buf) > MAX_LINE_BYTES:
            raise SSELineTooLong(f"an event stream line exceeded {MAX_LINE_BYTES} bytes")
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: a trailing line without terminator is processed, an undispatched event dropped
        (per spec, an event needs its blank line)."""
        if self._buffer:
            self._line(bytes(self._buffer))
            self._buffer.clear()
        self._data.clear()
        return []

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", errors="replace")
        if line[0] == ":":
            self.comments += 1
            return None
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
            self._id_given = True
        return None

    def _dispatch(self) -> SSEEvent | None:
        given, self._id_given = self._id_given, False
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(data="\n".join(self._data), event=self._event or "message", id=self._id, id_given=given)
        self._data.clear()
        self._event = ""
        return event

"""Incremental NDJSON line splitting (pure, no I/O), shared by the Ollama and generic NDJSON decoders.

Bytes arrive in whatever pieces the network delivers; a line is only decoded once it is whole, so a CRLF or a
multi-byte UTF-8 character split across reads is safe. Lines end in LF (a CR before it is dropped); blank lines
are keep-alives and skipped; a leading UTF-8 byte order mark is dropped. A line longer than the SSE parser's cap
(`MAX_LINE_BYTES`) is not a stream the relay will buffer: the splitter overflows, hands out nothing more, and the
decoder ends the stream as an upstream error. The splitter does not raise, so the decoders stay exception-free.
"""

from __future__ import annotations

from ..sse import MAX_LINE_BYTES

__all__ = ["MAX_LINE_BYTES", "LineSplitter"]

_BOM = b"\xef\xbb\xbf"


class LineSplitter:
    """`feed(bytes) -> list[str]` of the lines completed so far, then `close()` for a trailing unterminated one.

    Once a line passes `MAX_LINE_BYTES`, `overflowed` is True: the lines completed before it are still handed
    out, and every later call returns nothing."""

    __slots__ = ("_buffer", "_scanned", "_started", "overflowed")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already searched for LF: a long line is not scanned again
        self._started = False
        self.overflowed = False

    def feed(self, raw: bytes) -> list[str]:
        if self.overflowed or not raw:
            return []
        self._buffer += raw
        if not self._started:
            if len(self._buffer) < len(_BOM) and _BOM.startswith(bytes(self._buffer)):
                return []
            self._started = True
            if self._buffer.startswith(_BOM):
                del self._buffer[: len(_BOM)]
        lines: list[str] = []
        buf, start = self._buffer, 0
        lf = buf.find(b"\n", self._scanned)
        while lf != -1:
            if not self._take(bytes(buf[start:lf]), lines):
                return lines
            start = lf + 1
            lf = buf.find(b"\n", start)
        del buf[:start]
        self._scanned = len(buf)
        if len(buf) - int(buf.endswith(b"\r")) > MAX_LINE_BYTES:  # the CR of a CRLF split here is not the line's
            self._overflow()
        return lines

    def close(self) -> list[str]:
        """The body ended: a last line without its LF still counts (a server may omit the final newline)."""
        if self.overflowed:
            return []
        lines: list[str] = []
        self._take(bytes(self._buffer), lines)
        self._buffer.clear()
        self._scanned = 0
        return lines

    def _take(self, line: bytes, lines: list[str]) -> bool:
        """Append one whole line (unless blank); False when it is past the cap."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LINE_BYTES:
            self._overflow()
            return False
        if line.strip():
            lines.append(line.decode("utf-8", errors="replace"))
        return True

    def _overflow(self) -> None:
        self.overflowed = True
        self._buffer.clear()
        self._scanned = 0

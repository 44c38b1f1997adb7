"""The output side of the compliance gate for one stream: the pattern sanitizer (`chunks.py`, pure) and then the
optional Bedrock guardrail (`guardrail.py`, one call per window of text), both on the same text channels of the
same chunk objects, between the decoder and the framing.

`chunk` turns one upstream chunk into what may be sent now; `finish` judges whatever is still held when the stream
ends. The first party to block names the block (`block`): the sanitizer in block mode (`content_filtered`, with the
entity type), or the guardrail (`content_filtered` with the kinds it found, or `guardrail_unavailable` failing
closed). Counts go to the audit: the sanitizer's by entity type, the guardrail's by kind as `guardrail:<kind>`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .chunks import TEXT_FIELDS, Channel, ChunkSanitizer, carries_something, flush_chunk, put_text

if TYPE_CHECKING:
    import anyio.abc

    from .guardrail import OutputGuardrail


@dataclass(frozen=True, slots=True)
class Block:
    """Why the gate ended a stream: the terminal error's code, a message safe to show, the types that caused it."""

    code: str
    message: str
    types: tuple[str, ...]


class OutputGate:
    def __init__(self, sanitizer: ChunkSanitizer | None, guard: OutputGuardrail | None) -> None:
        if sanitizer is None and guard is None:
            raise ValueError("an output gate needs a sanitizer, a guardrail, or both")
        self._sanitizer = sanitizer
        self._guard = guard
        self._guarded: dict[Channel, None] = {}  # the guardrail's channels, in order of first text

    @property
    def blocks(self) -> bool:
        """Whether a stream may be ended by the gate, so that the response waits for the first text to start."""
        return self._guard is not None or (self._sanitizer is not None and self._sanitizer.blocks)

    @property
    def block(self) -> Block | None:
        sanitizer, guard = self._sanitizer, self._guard
        if sanitizer is not None and sanitizer.blocked:
            types = sanitizer.blocked
            message = f"The answer contained a value of a blocked type ({', '.join(types)}); the stream was ended."
            return Block("content_filtered", message, types)
        if guard is not None and guard.blocked is not None:
            return Block(guard.blocked.code, guard.blocked.message, tuple(sorted(guard.findings)))
        return None

    @property
    def counts(self) -> Counter[str]:
        counts = Counter(self._sanitizer.counts) if self._sanitizer is not None else Counter[str]()
        if self._guard is not None:
            counts.update({f"guardrail:{kind}": n for kind, n in self._guard.findings.items()})
        return counts

    @property
    def max_held(self) -> int:
        return self._sanitizer.max_held if self._sanitizer is not None else 0

    @property
    def guardrail_action(self) -> str | None:
        """The outcome's: the strongest action the guardrail took, or `unavailable` when it failed (failing closed,
        it ended the stream; failing open, text went out unassessed). None without a guardrail."""
        guard = self._guard
        if guard is None:
            return None
        if guard.blocked is not None:
            return "unavailable" if guard.blocked.code == "guardrail_unavailable" else guard.action
        if guard.failures:
            return "unavailable"  # failing open: some of the answer went out unassessed, which the audit must show
        return guard.action

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        if self._guard is not None:
            self._guard.start(tg)

    async def wait_intervention(self) -> None:
        """Returns when the guardrail intervened (async mode ends the stream then); never without a guardrail."""
        if self._guard is not None:
            await self._guard.intervened.wait()
        else:
            await anyio.sleep_forever()

    async def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks to send for one upstream chunk, in order; none once the gate blocked."""
        outs = self._sanitizer.chunk(chunk) if self._sanitizer is not None else [chunk]
        if self._guard is None:
            return outs
        guarded: list[dict[str, Any]] = []
        for out in outs:  # once the guardrail blocked, it releases no text: only what carries none goes on
            guarded.extend(await self._guard_chunk(out))
        return guarded

    async def finish(self, template: dict[str, Any] | None, *, complete: bool) -> list[dict[str, Any]]:
        """Judge every held tail as the stream ends (see `ChunkSanitizer.finish`), then the guardrail's windows."""
        if self.block is not None:
            return []
        tails = self._sanitizer.finish(template, complete=complete) if self._sanitizer is not None else []
        if self._guard is None:
            return tails
        out: list[dict[str, Any]] = []
        for tail in tails:
            out.extend(await self._guard_chunk(tail))
        out.extend(await self._flush_guard(template or {}, None))
        if self._guard.asynchronous:  # the last windows were shown: their judgement may still end the stream
            self._guard.close()
            await self._guard.judged()
        return [] if self.block is not None and not out else out

    # --- the guardrail over chunks ---------------------------------------------------------------------------
    async def _guard_chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                await self._guard_delta(index, delta)
            if choice.get("finish_reason") is not None:
                out.extend(await self._flush_guard(chunk, index))
            if self.block is not None:
                return out
        if carries_something(chunk):
            out.append(chunk)
        return out

    async def _guard_delta(self, index: int, delta: dict[str, Any]) -> None:
        for name in TEXT_FIELDS:
            text = delta.get(name)
            if isinstance(text, str) and text:
                delta[name] = await self._feed((index, name), text)
                if not delta[name] and name == "content" and "role" not in delta:
                    del delta[name]
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str) and function["arguments"]:
                function["arguments"] = await self._feed((index, "tool", call.get("index", 0)), function["arguments"])

    async def _feed(self, channel: Channel, text: str) -> str:
        assert self._guard is not None
        self._guarded.setdefault(channel)
        return await self._guard.feed(channel, text)

    async def _flush_guard(self, template: dict[str, Any], index: int | None) -> list[dict[str, Any]]:
        """The guardrail's held windows of one choice (or all), judged, as chunks before the finish."""
        assert self._guard is not None
        deltas: dict[int, dict[str, Any]] = {}
        for channel in [c for c in self._guarded if index is None or c[0] == index]:
            del self._guarded[channel]
            text = await self._guard.finish(channel)
            if text:
                put_text(deltas.setdefault(channel[0], {}), channel, text)
        return [flush_chunk(template, i, delta) for i, delta in sorted(deltas.items())]

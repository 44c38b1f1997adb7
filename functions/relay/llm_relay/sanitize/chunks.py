"""The sanitizer on a stream of OpenAI chunk objects (pure): between the decoder and the framing, on the text of every
choice (content, refusal, reasoning) and every tool call's arguments, one `Scanner` per text channel.

A chunk comes out with the text that may be released now, or not at all when nothing of it may be released yet and
it carries nothing else; ids, roles, `finish_reason`, usage and tool-call ids and names pass unchanged. A choice's
`finish_reason` first releases its held text, judged as final, in a chunk of its own just before it, so the client
reads the whole answer before the finish. `finish()` does the same for whatever is still held when the stream ends
another way (a cancel, the deadline, an upstream error).

Redact mode replaces each value by its placeholder. Block mode releases the text before the first value, then
nothing more: `blocked` names the entity types, and the stream ends `content_filter`.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

from .policy import Mode
from .recognizers import builtin
from .scanner import Detector, Piece, Scanner, redact

TEXT_FIELDS = ("content", "refusal", "reasoning_content")  # the text channels of a delta
Channel = tuple[Any, ...]  # (choice index, field) or (choice index, "tool", tool-call index)


@functools.lru_cache(maxsize=32)
def detector_for(entities: frozenset[str], phone_region: str) -> Detector:
    """The compiled recognizers of a set of entity types, built once per process and shared by every stream."""
    recognizers = builtin(phone_region)
    return Detector(recognizers[name] for name in recognizers if name in entities)


def warm(entities: frozenset[str], phone_region: str) -> None:
    """Load and compile the recognizers at start-up, and phonenumbers' metadata of the region (read on its first
    use), so that the first request of a relay whose deployment turns the gate on does not pay for them."""
    detector = detector_for(entities, phone_region)
    redact(detector, "call +1 415-555-2671 or 020 7946 0958 at a@b.co", lambda entity: entity)


class ChunkSanitizer:
    def __init__(self, detector: Detector, mode: Mode, placeholder: str) -> None:
        if mode == "off":
            raise ValueError("a sanitizer needs a mode other than off")
        self._detector = detector
        self._block = mode == "block"
        self._placeholder = placeholder
        self._scanners: dict[Channel, Scanner] = {}
        self.counts: Counter[str] = Counter()  # entity type -> values caught (redacted, or the one that blocked)
        self.blocked: tuple[str, ...] = ()  # block mode: the entity types that ended the stream
        self.max_held = 0  # the longest tail held back, in characters

    @property
    def blocks(self) -> bool:
        """Whether a value ends the stream (block mode) instead of being replaced."""
        return self._block

    @property
    def bound(self) -> int:
        """The longest match an enabled recognizer can produce: what the sanitizer holds back at most."""
        return self._detector.bound

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks to send for one upstream chunk, in order (none, the chunk, or a flush before it)."""
        if self.blocked:
            return []
        out: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._sanitize_delta(index, delta)
            if choice.get("finish_reason") is not None and not self.blocked:
                out.extend(self._flush(chunk, functools.partial(_of_choice, index)))
            if self.blocked:
                break
        if self.blocked:  # the text before the value goes out; the upstream's finish and usage do not
            _strip_ending(chunk)
            return [*out, chunk] if chunk["choices"] else out
        if carries_something(chunk):
            out.append(chunk)
        return out

    def finish(self, template: dict[str, Any] | None, *, complete: bool) -> list[dict[str, Any]]:
        """Judge every held tail as the stream ends: chunks shaped after `template`. `complete`: the upstream
        finished the answer; otherwise it was cut, and a tail that may begin a value is withheld."""
        if self.blocked:
            return []
        return self._flush(template or {}, lambda channel: True, complete=complete)

    # --- text channels ----------------------------------------------------------------------------------------
    def _sanitize_delta(self, index: int, delta: dict[str, Any]) -> None:
        for name in TEXT_FIELDS:
            text = delta.get(name)
            if isinstance(text, str) and text:
                released = self._feed((index, name), text)
                if released or name != "content" or "role" in delta:
                    delta[name] = released
                else:
                    del delta[name]
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            kept = [call for call in calls if not isinstance(call, dict) or self._sanitize_call(index, call)]
            if kept:
                delta["tool_calls"] = kept
            else:
                del delta["tool_calls"]
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            self._sanitize_arguments((index, "function_call"), legacy)

    def _sanitize_call(self, index: int, call: dict[str, Any]) -> bool:
        """Sanitize one tool-call delta's arguments; False when nothing of it is left to send."""
        function = call.get("function")
        if not isinstance(function, dict):
            return True
        self._sanitize_arguments((index, "tool", call.get("index", 0)), function)
        return bool(function.get("arguments") or function.get("name") or call.get("id") or call.get("type"))

    def _sanitize_arguments(self, channel: Channel, function: dict[str, Any]) -> None:
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            function["arguments"] = self._feed(channel, arguments)

    def _feed(self, channel: Channel, text: str) -> str:
        if self.blocked:
            return ""
        scanner = self._scanners.get(channel)
        if scanner is None:
            scanner = self._scanners[channel] = Scanner(self._detector, self._render)
        piece = scanner.feed(text)
        self.max_held = max(self.max_held, scanner.held)
        return self._judged(piece)

    def _judged(self, piece: Piece) -> str:
        """What of a released piece is sent: all of it (redact), or what comes before the first value (block)."""
        if not piece.entities:
            return piece.text
        if not self._block:
            self.counts.update(piece.entities)
            return piece.text
        self.counts[piece.entities[0]] += 1
        self.blocked = (piece.entities[0],)
        assert piece.first_at is not None
        return piece.text[: piece.first_at]

    def _render(self, entity: str) -> str:
        return self._placeholder.format(entity=entity)

    def _flush(
        self, template: dict[str, Any], which: Callable[[Channel], bool], *, complete: bool = True
    ) -> list[dict[str, Any]]:
        """Release the held tails of the channels `which` selects, judged as final: one chunk per choice."""
        deltas: dict[int, dict[str, Any]] = {}
        for channel in [c for c in self._scanners if which(c)]:
            scanner = self._scanners.pop(channel)
            if self.blocked:
                continue
            text = self._judged(scanner.finish(complete=complete))
            if text:
                put_text(deltas.setdefault(channel[0], {}), channel, text)
        return [flush_chunk(template, index, delta) for index, delta in sorted(deltas.items())]


def _strip_ending(chunk: dict[str, Any]) -> None:
    """A blocked stream's last chunk keeps its text only: the stream ends `content_filter`, not as the upstream said."""
    chunk.pop("usage", None)
    choices = [c for c in chunk.get("choices") or () if isinstance(c, dict) and c.get("delta")]
    for choice in choices:
        choice["finish_reason"] = None
    chunk["choices"] = choices


def _of_choice(index: Any, channel: Channel) -> bool:
    return bool(channel[0] == index)


def put_text(delta: dict[str, Any], channel: Channel, text: str) -> None:
    """Put a channel's released text into a delta, where that channel's text goes."""
    kind = channel[1]
    if kind == "tool":
        delta.setdefault("tool_calls", []).append({"index": channel[2], "function": {"arguments": text}})
    elif kind == "function_call":
        delta["function_call"] = {"arguments": text}
    else:
        delta[kind] = text


def flush_chunk(template: dict[str, Any], index: int, delta: dict[str, Any]) -> dict[str, Any]:
    """A chunk of its own for text released at a choice's end, shaped after the stream's chunks."""
    keys = ("id", "object", "created", "model", "system_fingerprint")
    chunk: dict[str, Any] = {key: template[key] for key in keys if key in template}
    chunk.setdefault("object", "chat.completion.chunk")
    chunk["choices"] = [{"index": index, "delta": delta, "finish_reason": None}]
    return chunk


def carries_something(chunk: dict[str, Any]) -> bool:
    """Whether a chunk is still worth sending: usage, or a choice with a delta left or a finish."""
    if chunk.get("usage") or not chunk.get("choices"):
        return True
    return any(
        not isinstance(choice, dict) or choice.get("delta") or choice.get("finish_reason") is not None
        for choice in chunk["choices"]
    )

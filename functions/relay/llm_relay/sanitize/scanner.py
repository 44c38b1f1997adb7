"""Split-safe scanning of a growing text (pure): what may be released now, and which values it contains.

`redact(text)` is defined by one rule, applied to the whole text: every recognizer proposes candidates left to
right (its pattern's non-overlapping matches), a validator confirms them, and among the confirmed ones the leftmost
wins, then the longest, then the recognizer listed first; a chosen value is replaced by its placeholder.

A stream sees the text in pieces. `Scanner` holds back only the tail in which a value could still begin, and
releases everything before it, so that the concatenation of what it releases is exactly `redact(text)` for every
way of cutting the same text into pieces (a property test checks this). The cut point for a text seen so far is
found in three steps:
1. The probe, every pattern followed by a never-matching `(?!)` and searched in partial mode, finds the leftmost
   position from which some pattern could still read past the end: a value there may not be complete yet (or may
   grow, or a boundary after it may fail), so the cut is at most there. Before it, no pattern's outcome depends on
   text still to come.
2. A candidate that starts before the cut and ends after it moves the cut to its start, until none does: the
   choice between overlapping candidates is then made on one side of the cut only.
3. The candidates before the cut are confirmed, chosen and replaced; the text up to the cut is released. A few
   released characters are kept as context for the patterns' look-behind.
The held tail is therefore never longer than the longest match an enabled recognizer can produce (`bound`), except
where overlapping candidates chain, each shorter than that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import regex

from .recognizers import Recognizer

CONTEXT_CHARS = 8  # released characters kept for the patterns' look-behind (each looks one character back)


@dataclass(frozen=True, slots=True)
class Found:
    """A chosen value: its entity type and where it is in the text scanned."""

    entity: str
    start: int
    end: int


class Detector:
    """The enabled recognizers, compiled once for a policy and shared by every stream that uses it."""

    def __init__(self, recognizers: Iterable[Recognizer]) -> None:
        self.recognizers = tuple(recognizers)
        if not self.recognizers:
            raise ValueError("a detector needs at least one recognizer")
        # Per recognizer: its gate, its pattern, and its probe (the pattern followed by a never-matching `(?!)`,
        # searched in partial mode). Separate patterns cost less than one alternation of them all, and the gates
        # skip most of them for most pieces of a stream.
        self._checks = [
            (order, r.compiled_gate(), r.compiled(), regex.compile(f"(?:{r.pattern})(?!)", regex.VERSION0))
            for order, r in enumerate(self.recognizers)
        ]
        self.bound = max(r.max_len for r in self.recognizers)

    @property
    def entities(self) -> tuple[str, ...]:
        return tuple(r.entity for r in self.recognizers)

    def scan(self, text: str, pos: int, *, final: bool) -> tuple[int, list[Found]]:
        """The cut (text before it may be released) and the values chosen in `text[pos:cut]`; `final`: nothing more
        will follow, so everything is decided."""
        cut = len(text)
        held = text[pos:]
        checks = [check for check in self._checks if check[1] is None or check[1].search(held)]
        if not final:
            for _, _, _, probe in checks:
                open_match = probe.search(text, pos, partial=True)
                if open_match is not None and open_match.start() < cut:
                    cut = open_match.start()
        if cut <= pos:
            return pos, []
        candidates: list[tuple[int, int, int]] = []
        for order, _, pattern, _ in checks:
            for match in pattern.finditer(text, pos):
                if match.start() >= cut:
                    break
                candidates.append((match.start(), match.end(), order))
        if not candidates:
            return cut, []  # the common case: nothing that looks like a value
        cut = _settle_cut(candidates, cut)
        return cut, self._choose(text, [c for c in candidates if c[1] <= cut])

    def _choose(self, text: str, candidates: list[tuple[int, int, int]]) -> list[Found]:
        """Leftmost, then longest, then the recognizer listed first; a candidate its validator refuses is skipped."""
        chosen: list[Found] = []
        taken_to = -1
        for start, end, order in sorted(candidates, key=lambda c: (c[0], c[0] - c[1], c[2])):
            if start < taken_to:
                continue
            recognizer = self.recognizers[order]
            if recognizer.validate is not None and not recognizer.validate(text[start:end]):
                continue
            chosen.append(Found(recognizer.entity, start, end))
            taken_to = end
        return chosen


def _settle_cut(candidates: list[tuple[int, int, int]], cut: int) -> int:
    """Move the cut back to the start of any candidate that crosses it, until none does."""
    moved = True
    while moved:
        moved = False
        for start, end, _ in candidates:
            if start < cut < end:
                cut, moved = start, True
    return cut


@dataclass(slots=True)
class Piece:
    """What a scanner releases at once: the text (values replaced), the entity types replaced in it, and where the
    first replacement begins in that text (None: none), which is where a blocking policy stops."""

    text: str = ""
    entities: list[str] = field(default_factory=list)
    first_at: int | None = None


Render = Callable[[str], str]


class Scanner:
    """One text channel of a stream (a choice's content, a tool call's arguments): feed it pieces, release what is
    decided; `finish` decides the rest."""

    def __init__(self, detector: Detector, render: Render, text: str = "") -> None:
        self._detector = detector
        self._render = render
        self._text = text  # a little released context, then the held text
        self._pos = 0  # where the held text starts in `_text`

    @property
    def held(self) -> int:
        """Characters held back now."""
        return len(self._text) - self._pos

    def feed(self, text: str) -> Piece:
        self._text += text
        return self._release(final=False)

    def finish(self, *, complete: bool = True) -> Piece:
        """Decide the held text. `complete`: the text ended where its author ended it, so the tail is judged as it
        is. Otherwise (the stream was cut: a cancel, an error, the deadline) what is decided is released and the
        rest is withheld: it may be the first part of a value, which no recognizer can confirm any more."""
        if complete:
            return self._release(final=True)
        piece = self._release(final=False)
        self._text, self._pos = "", 0
        return piece

    def _release(self, *, final: bool) -> Piece:
        text, pos = self._text, self._pos
        cut, found = self._detector.scan(text, pos, final=final)
        piece = Piece()
        if found:
            parts: list[str] = []
            at = pos
            for value in found:
                parts.append(text[at : value.start])
                if piece.first_at is None:
                    piece.first_at = sum(len(p) for p in parts)
                parts.append(self._render(value.entity))
                piece.entities.append(value.entity)
                at = value.end
            parts.append(text[at:cut])
            piece.text = "".join(parts)
        else:
            piece.text = text[pos:cut]
        keep = max(0, cut - CONTEXT_CHARS)
        self._text, self._pos = text[keep:], cut - keep
        return piece


def redact(detector: Detector, text: str, render: Render) -> Piece:
    """The whole text at once: the definition a stream's pieces add up to."""
    return Scanner(detector, render, text).finish()

"""Split-safe scanning of a growing text (pure): what may be released now, and which values it contains.

`redact(text)` is defined by one rule, applied to the whole text: every recognizer proposes candidates left to
right (its pattern's non-overlapping matches), a validator confirms them, and among the confirmed ones the leftmost
wins, then the longest, then the recognizer listed first; a chosen value is replaced by its placeholder.

A stream sees the text in pieces. `Scanner` holds back only the tail in which a value could still begin, and
releases everything before it, so that the concatenation of what it releases is exactly `redact(text)` for every
way of cutting the same text into pieces (a property test checks this). Each time text arrives:
1. Each recognizer's probe (its pattern followed by a never-matching `(?!)`, searched in partial mode) finds the
   leftmost position from which the pattern could still read past the end: a value there may not be complete yet
   (or may grow, or a boundary after it may fail). The cut is the leftmost of these. Before it, no pattern's
   outcome can change with text still to come.
2. Every candidate that starts before the cut is decided now, by the rule above, in order: a chosen value is
   released whole, even where it reaches past the cut (what lies under it cannot be chosen any more), so the text
   is released up to the cut or to the end of the last value chosen, whichever is further.
3. Each recognizer resumes its search where the whole-text search would be: after its last candidate, or at a
   candidate that crosses the cut. The end of the last value chosen is kept too, so no later candidate that it
   covers is ever chosen.
The held tail is therefore never longer than the longest match an enabled recognizer can produce (`bound`) plus
the character a pattern's boundary check looks at after it.
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

    def scan(self, text: str, base: int, state: ScanState, *, final: bool) -> tuple[int, list[Found]]:
        """Decide what can be decided: `text` is the channel's text from absolute offset `base` on (it reaches back to
        every recognizer's resume position); returns the new release point and the values chosen before it, and
        moves `state` on. `final`: nothing more will follow, so everything is decided."""
        end = base + len(text)
        cut = end
        active: list[tuple[int, regex.Pattern[str], int]] = []
        for order, gate, pattern, probe in self._checks:
            at = state.resume[order] - base
            if gate is not None and not gate.search(text, at):
                state.resume[order] = max(state.resume[order], state.released)
                continue  # no match and no beginning of one from here: nothing to do for this one
            active.append((order, pattern, at))
            if not final:
                open_match = probe.search(text, at, partial=True)
                if open_match is not None and base + open_match.start() < cut:
                    cut = base + open_match.start()
        cut = max(cut, state.released)  # positions decided before stay decided (the probe cannot go back)
        candidates: list[tuple[int, int, int]] = []
        for order, pattern, at in active:
            resume = max(cut, state.resume[order])
            for match in pattern.finditer(text, at):
                start, stop = base + match.start(), base + match.end()
                if start >= cut:
                    break
                if start >= state.released:  # one before was decided with the text released
                    candidates.append((start, stop, order))
                if stop > cut:  # crosses the cut: this recognizer's search goes on from it
                    resume = start
                    break
            state.resume[order] = resume
        if candidates:
            state.taken_to, chosen = self._choose(text, base, candidates, state.taken_to)
        else:
            chosen = []
        state.released = max(cut, state.taken_to)
        return state.released, chosen

    def _choose(
        self, text: str, base: int, candidates: list[tuple[int, int, int]], taken_to: int
    ) -> tuple[int, list[Found]]:
        """Leftmost, then longest, then the recognizer listed first; a candidate its validator refuses is skipped,
        and so is one under a value already chosen (`taken_to`: where the last chosen value ends)."""
        chosen: list[Found] = []
        for start, stop, order in sorted(candidates, key=lambda c: (c[0], c[0] - c[1], c[2])):
            if start < taken_to:
                continue
            recognizer = self.recognizers[order]
            if recognizer.validate is not None and not recognizer.validate(text[start - base : stop - base]):
                continue
            chosen.append(Found(recognizer.entity, start, stop))
            taken_to = stop
        return taken_to, chosen


@dataclass(slots=True)
class ScanState:
    """Where one channel's scan stands, in absolute offsets of its text: everything before `released` was
    released; `taken_to` is where the last chosen value ends; `resume` is, per recognizer, where its search goes
    on (where the whole-text search would be)."""

    resume: list[int]
    released: int = 0
    taken_to: int = 0


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
        self._text = text  # the channel's text from `_base` on: some context, then what is held
        self._base = 0
        self._state = ScanState(resume=[0] * len(detector.recognizers))

    @property
    def held(self) -> int:
        """Characters held back now."""
        return self._base + len(self._text) - self._state.released

    def feed(self, text: str) -> Piece:
        self._text += text
        return self._release(final=False)

    def finish(self, *, complete: bool = True) -> Piece:
        """Decide the held text. `complete`: the text ended where its author ended it, so the tail is judged as it
        is. Otherwise (the stream was cut: a cancel, an error, the deadline) what is decided is released and the
        rest is withheld: it may be the first part of a value, which no recognizer can confirm any more."""
        piece = self._release(final=complete)
        self._state.released = self._base + len(self._text)
        self._text, self._base = "", self._state.released
        return piece

    def _release(self, *, final: bool) -> Piece:
        text, base, state = self._text, self._base, self._state
        was = state.released
        released, found = self._detector.scan(text, base, state, final=final)
        piece = Piece()
        if found:
            parts: list[str] = []
            at = was
            for value in found:
                parts.append(text[at - base : value.start - base])
                if piece.first_at is None:
                    piece.first_at = sum(len(p) for p in parts)
                parts.append(self._render(value.entity))
                piece.entities.append(value.entity)
                at = value.end
            parts.append(text[at - base : released - base])
            piece.text = "".join(parts)
        else:
            piece.text = text[was - base : released - base]
        keep = max(base, min(released, *state.resume) - CONTEXT_CHARS)
        self._text, self._base = text[keep - base :], keep
        return piece


def redact(detector: Detector, text: str, render: Render) -> Piece:
    """The whole text at once: the definition a stream's pieces add up to."""
    return Scanner(detector, render, text).finish()

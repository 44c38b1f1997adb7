"""Cutting a live stream's text into guardrail windows (pure).

A guardrail judges text in context: a name or a denied topic split across two calls may pass both. So text is
held until a window of at least `minimum` characters can be cut where a thought ends: at the end of a sentence
(`.`, `!` or `?` followed by whitespace, or a newline) within a look-ahead of twice the minimum; failing that, at
the last word end (whitespace) in that look-ahead, or the first one past it; failing that (one unbroken token),
hard at four times the minimum. A cut always falls after the whitespace that ends a sentence or word, so `3.14`,
`jane.doe@example.com` or `example.com` are never split at their dots.

A window never exceeds the maximum, so a guardrail call's size (and cost) is bounded whatever the model writes.
"""

from __future__ import annotations

from dataclasses import dataclass

SENTENCE_ENDS = frozenset(".!?")


@dataclass(frozen=True, slots=True)
class WindowRule:
    """Where windows are cut: `minimum` characters at least, a sentence end looked for up to `lookahead`, never
    more than `maximum` characters."""

    minimum: int
    lookahead: int
    maximum: int

    def __post_init__(self) -> None:
        if not 0 < self.minimum <= self.lookahead <= self.maximum:
            raise ValueError(f"window sizes must be 0 < minimum <= lookahead <= maximum, not {self}")

    @classmethod
    def for_size(cls, chars: int) -> WindowRule:
        """The rule for a window size (`RELAY_GUARDRAIL_WINDOW_CHARS`): look-ahead 2x, maximum 4x."""
        return cls(chars, 2 * chars, 4 * chars)


def _sentence_end(text: str, cut: int) -> bool:
    """Whether a window ending at `cut` ends a sentence: a newline, or `.!?` then whitespace."""
    last = text[cut - 1]
    return last == "\n" or (last.isspace() and cut >= 2 and text[cut - 2] in SENTENCE_ENDS)


def next_cut(text: str, rule: WindowRule) -> int | None:
    """Where the first window of `text` ends (`text[:cut]`), or None while more text is needed to decide."""
    if len(text) < rule.minimum:
        return None
    horizon = min(len(text), rule.lookahead)
    for cut in range(rule.minimum, horizon + 1):
        if _sentence_end(text, cut):
            return cut
    if len(text) < rule.lookahead:
        return None  # a sentence may still end within the look-ahead
    for cut in range(rule.lookahead, rule.minimum - 1, -1):
        if text[cut - 1].isspace():
            return cut
    for cut in range(rule.lookahead + 1, min(len(text), rule.maximum) + 1):
        if text[cut - 1].isspace():
            return cut
    return rule.maximum if len(text) >= rule.maximum else None


def split_windows(text: str, rule: WindowRule, *, final: bool = False) -> tuple[list[str], str]:
    """(the complete windows at the head of `text`, the rest held back). `final` (the channel ended): the rest is
    a last, possibly short, window, and nothing is held back."""
    windows: list[str] = []
    start = 0
    while (cut := next_cut(text[start:], rule)) is not None:
        windows.append(text[start : start + cut])
        start += cut
    rest = text[start:]
    if final and rest:
        windows.append(rest)
        rest = ""
    return windows, rest


def needs_assessment(window: str) -> bool:
    """Whitespace alone carries nothing a guardrail could find: released without a call."""
    return bool(window.strip())

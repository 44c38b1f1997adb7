"""*Pure*: dropping the events an upstream sends again, where it numbers them.

A provider that resends part of a stream (a retrying proxy, a replay after a reconnect) would have the client show
the resent tokens twice and the relay count them twice. Only numbered events can be told apart from new ones: an SSE
`id:` line, or the `sequence_number` of OpenAI's Responses events. An event whose number repeats, or goes back, is
dropped before the client or the meter sees it, and counted (`repeats`, on the usage record).

Chat-completion chunks carry no number, and equal content is legitimate ("tok tok"; a model repeating itself): so
nothing is de-duplicated there, since any rule would drop real output.
"""

from __future__ import annotations

__all__ = ["EventSequence"]

MAX_REMEMBERED = 4096  # ids that are not numbers: the last ones seen, to tell a resent one from a new one


class EventSequence:
    """The numbers of a stream's events so far. Numeric ids must increase; other ids must not have been seen."""

    __slots__ = ("_last", "_seen", "repeats")

    def __init__(self) -> None:
        self._last: int | None = None
        self._seen: dict[str, None] = {}  # insertion-ordered: the oldest is forgotten first
        self.repeats = 0

    def admit(self, number: int | str | None) -> bool:
        """Whether an event numbered `number` is new (None: it carries no number, so it is). False counts a repeat."""
        if number is None:
            return True
        if isinstance(number, int) or (isinstance(number, str) and number.isdigit() and len(number) < 20):
            value = int(number)
            if self._last is not None and value <= self._last:
                self.repeats += 1
                return False
            self._last = value
            return True
        if number in self._seen:
            self.repeats += 1
            return False
        self._seen[number] = None
        if len(self._seen) > MAX_REMEMBERED:
            del self._seen[next(iter(self._seen))]
        return True

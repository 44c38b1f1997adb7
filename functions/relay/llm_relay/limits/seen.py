"""What this process knows of a key's rate counters: lower bounds for each minute, learnt from the items DynamoDB
returns when it refuses a write (ALL_OLD), or written by this process itself. Admission uses them for the previous
minute's count (so most admissions need one round trip) and for the `x-ratelimit-*` headers; settlement adds the
tokens it books. Memory stays flat: minutes that no longer weigh on any window are forgotten."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Seen:
    """Lower bounds of one key's counters in one minute: observed in ALL_OLD items, or written by us."""

    requests: int = 0
    tokens: int = 0
    own_requests: int = 0
    own_tokens: int = 0

    @property
    def low_requests(self) -> int:
        return max(self.requests, self.own_requests)

    @property
    def low_tokens(self) -> int:
        return max(self.tokens, self.own_tokens)


class SeenCounters:
    def __init__(self) -> None:
        self._seen: dict[tuple[str, int], Seen] = {}
        self._pruned_at = 0

    def at(self, key_id: str, minute: int) -> Seen:
        seen = self._seen.get((key_id, minute))
        if seen is None:
            if minute > self._pruned_at:
                self._prune(minute)
            seen = self._seen[(key_id, minute)] = Seen()
        return seen

    def learn(self, key_id: str, minute: int, item: Mapping[str, Any] | None) -> None:
        """A counter item DynamoDB returned for `minute`: its counts are lower bounds from now on."""
        if item:
            seen = self.at(key_id, minute)
            seen.requests = max(seen.requests, int(item.get("requests", 0)))
            seen.tokens = max(seen.tokens, int(item.get("tokens", 0)))

    def admitted(self, key_id: str, minute: int, tokens: int) -> Seen:
        """This process admitted a request costing `tokens` in `minute`."""
        seen = self.at(key_id, minute)
        seen.own_requests += 1
        seen.own_tokens += tokens
        return seen

    def settled(self, key_id: str, minute: int, tokens_delta: int) -> None:
        """This process booked `tokens_delta` more (or fewer) tokens to `minute` at settlement."""
        self.at(key_id, minute).own_tokens += tokens_delta

    def _prune(self, minute: int) -> None:
        self._pruned_at = minute
        for key in [k for k in self._seen if k[1] < minute - 2]:
            del self._seen[key]

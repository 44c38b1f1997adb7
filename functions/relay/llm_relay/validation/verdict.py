"""What the relay found when it checked an assembled answer (pure): one verdict per request, carried by the summary,
the finishing chunk, the usage record, the log line and the `OutputValidation` metric.

Its errors are short and never quote the answer: they name where the answer failed (`content`, a tool call's
`arguments`) and what it failed (a JSON parse error's position, the schema keyword's location and value, which come
from the client's own schema), since the verdict is logged and stored where completions never go.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

INVALID_OUTPUT = "invalid_output"  # the terminal error's code when `RELAY_VALIDATE=enforce` refuses an answer
MAX_ERRORS = 3
MAX_ERROR_CHARS = 200
TIMED_OUT = "validation timed out"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the answer is what the request asked for, with at most `MAX_ERRORS` reasons why not."""

    valid: bool
    errors: tuple[str, ...] = ()

    @classmethod
    def of(cls, errors: Iterable[str]) -> Verdict:
        """The verdict of these errors (none: valid), the first few kept, each cut short."""
        kept: list[str] = []
        for error in errors:
            if len(kept) == MAX_ERRORS:
                break
            if error not in kept:
                kept.append(_short(error))
        return cls(not kept, tuple(kept))

    def as_json(self) -> dict[str, Any]:
        return {"valid": self.valid, "errors": list(self.errors)}

    @classmethod
    def from_item(cls, item: object) -> Verdict | None:
        """A verdict as stored (a DynamoDB map read back, `as_json`'s shape); None for anything else."""
        if not isinstance(item, dict) or not isinstance(item.get("valid"), bool):
            return None
        errors = item.get("errors")
        return cls(item["valid"], tuple(str(e) for e in errors) if isinstance(errors, list) else ())

    @property
    def message(self) -> str:
        """The terminal error's message when the answer is refused for it."""
        return "The answer failed the relay's validation: " + "; ".join(self.errors) + "."


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"

"""Milliseconds, rounded one way (pure): the log line, the NDJSON summary, the usage record and the ledger's
checkpoints all show a duration as `millis` makes it, so that they agree to the microsecond; and the
`Server-Timing` header of a relayed response, how the time until the provider answered was spent."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal


def millis(seconds: float | None) -> float | None:
    """`seconds` in milliseconds, to three decimals (a microsecond); None stays None."""
    return None if seconds is None else round(seconds * 1000, 3)


def millis_decimal(seconds: float | None) -> Decimal | None:
    """`millis` as DynamoDB stores a number (a Decimal of the same digits)."""
    ms = millis(seconds)
    return None if ms is None else Decimal(str(ms))


def server_timing(phases: Iterable[tuple[str, float]]) -> str:
    """The `Server-Timing` header (W3C Server Timing) of phases given as (name, seconds): `auth;dur=0.412,
    admit;dur=3.1`, each in milliseconds to three decimals at most (trailing zeros dropped)."""
    return ", ".join(f"{name};dur={max(0.0, seconds) * 1000:.3f}".rstrip("0").rstrip(".") for name, seconds in phases)

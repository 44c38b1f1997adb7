"""Milliseconds, rounded one way (pure): the log line, the NDJSON summary, the usage record and the ledger's
checkpoints all show a duration as `millis` makes it, so that they agree to the microsecond."""

from __future__ import annotations

from decimal import Decimal


def millis(seconds: float | None) -> float | None:
    """`seconds` in milliseconds, to three decimals (a microsecond); None stays None."""
    return None if seconds is None else round(seconds * 1000, 3)


def millis_decimal(seconds: float | None) -> Decimal | None:
    """`millis` as DynamoDB stores a number (a Decimal of the same digits)."""
    ms = millis(seconds)
    return None if ms is None else Decimal(str(ms))

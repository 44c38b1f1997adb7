"""How the CLI prints: JSON with plain decimals (never `6E+1`), aligned tables, CSV."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any


def plain(value: Decimal) -> str:
    """A decimal in positional notation: `Decimal("6E+1")` is `60`, `Decimal("1.50")` stays `1.50`."""
    return format(value, "f")


def jsonable(value: Any) -> Any:
    """Decimals as JSON numbers where they are whole (`60`), else as exact plain strings (`"0.00001275"`, the
    relay's own convention for money); containers converted throughout."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else plain(value)
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), indent=2))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def print_csv(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)


def printable(text: str) -> str:
    """Stored text (a key's name, a model) for a terminal: control characters escaped, so a value cannot
    move the cursor or forge a line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)

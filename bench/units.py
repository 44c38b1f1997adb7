"""Write and read units per request per partition, and the request rates they allow: pure accounting over what a
run of requests consumed (`bench/ledger_wcu.py` runs them through the relay's own code against the local DynamoDB,
whose `throttling.py` charges every write and read).

The rules:

- a spot is what DynamoDB cannot spread: on the table an item (`pk`, `sk`; a Query's read is its partition's,
  `sk` "*"), on a global secondary index a partition key value. Each takes at most 1,000 write and 3,000 read
  units a second (an item never splits; an index partition splits by its sort key only as far as its items
  allow, so a partition key value is counted whole);
- a spot's class, from its partition key (`pk`, or the index key): `request` if it names one of the run's
  requests, `key` if it names one of its keys, `shared` otherwise (one for the whole table: a day's usage, the
  `open` index's shards);
- spots that differ only by the run's ids or by a time window (an epoch minute, a day, a month, a timestamp) are
  one row: successive windows of one counter are one spot over time, and every request (or key) has the same
  spots. A shard suffix is not a time window: each shard stays a row of its own;
- a row's units per request are its units divided by the run's requests: a spot one request in four touches (a
  shard of four) comes out at a quarter of a request's writes, without knowing the layout;
- the ceilings: per key, 1,000 over the most write units a request puts on one `key` spot (3,000 over the most
  read units, if lower); table-wide the same over `shared` spots.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

WRITE_UNITS_PER_S = 1000
READ_UNITS_PER_S = 3000
TABLE = "table"

Class = Literal["request", "key", "shared"]
CLASSES: tuple[Class, ...] = ("request", "key", "shared")

_WINDOWS = (
    (re.compile(r"\d{4}-\d{2}-\d{2}T[0-9:.]+Z?"), "<time>"),
    (re.compile(r"\d{4}-\d{2}-\d{2}"), "<day>"),
    (re.compile(r"\d{4}-\d{2}"), "<month>"),
    (re.compile(r"\d{6,}"), "<n>"),  # an epoch second or minute; a shard number is shorter
)


@dataclass(frozen=True)
class Spot:
    """An item of the table (`resource` "table", `item` its sort key) or a partition of an index (`resource` the
    index's name, `item` None)."""

    resource: str
    partition: str
    item: str | None = None


@dataclass(frozen=True)
class Units:
    write: float = 0.0
    read: float = 0.0

    def __add__(self, other: Units) -> Units:
        return Units(self.write + other.write, self.read + other.read)


@dataclass(frozen=True)
class Row:
    """One spot, or spots that differ only by ids and time windows, with its units per request."""

    resource: str
    cls: Class
    pattern: str
    spots: int
    wcu: float
    rcu: float

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "wcu": round(self.wcu, 3), "rcu": round(self.rcu, 3)}


@dataclass(frozen=True)
class Run:
    """What one run consumed, and the ids it used (to classify and name its spots)."""

    requests: list[str]
    keys: list[str]
    consumed: Mapping[Spot, Units]


class Naming:
    def __init__(self, run: Run) -> None:
        self._requests = _alternation(run.requests)
        self._keys = _alternation(run.keys)

    def cls(self, partition: str) -> Class:
        if self._requests.search(partition):
            return "request"
        return "key" if self._keys.search(partition) else "shared"

    def pattern(self, text: str) -> str:
        text = self._keys.sub("<key>", self._requests.sub("<request>", text))
        for window, name in _WINDOWS:
            text = window.sub(name, text)
        return text


def _alternation(ids: Iterable[str]) -> re.Pattern[str]:
    escaped = sorted((re.escape(i) for i in ids), key=len, reverse=True)
    return re.compile("|".join(escaped) or "(?!)")


def rows(run: Run) -> list[Row]:
    """The run's spots as rows, their units per request (see the module's rules)."""
    naming = Naming(run)
    grouped: dict[tuple[str, Class, str], tuple[int, Units]] = {}
    for spot, units in run.consumed.items():
        name = spot.partition if spot.item is None else f"{spot.partition} | {spot.item}"
        at = (spot.resource, naming.cls(spot.partition), naming.pattern(name))
        count, total = grouped.get(at, (0, Units()))
        grouped[at] = (count + 1, total + units)
    n = len(run.requests)
    out = [Row(r, c, p, count, total.write / n, total.read / n) for (r, c, p), (count, total) in grouped.items()]
    return sorted(out, key=lambda row: (CLASSES.index(row.cls), row.resource != TABLE, row.resource, row.pattern))


def partitions(run: Run) -> list[Row]:
    """The table's partitions whole (every item of a `pk` together): what a partition takes before DynamoDB splits
    it for heat. Shown beside the items, not used for the ceilings."""
    whole: dict[Spot, Units] = {}
    for spot, units in run.consumed.items():
        if spot.resource == TABLE:
            at = Spot(TABLE, spot.partition)
            whole[at] = whole.get(at, Units()) + units
    return rows(Run(run.requests, run.keys, whole))


def hottest(found: Iterable[Row], cls: Class) -> Row | None:
    """The row of `cls` that allows the fewest requests a second."""
    of_class = [row for row in found if row.cls == cls and (row.wcu or row.rcu)]
    return min(of_class, key=_rate, default=None)


def ceiling(row: Row | None) -> int | None:
    """Requests a second the spot takes (None: no spot of the class, no ceiling from it)."""
    return None if row is None else math.floor(_rate(row))


def _rate(row: Row) -> float:
    writes = WRITE_UNITS_PER_S / row.wcu if row.wcu else math.inf
    reads = READ_UNITS_PER_S / row.rcu if row.rcu else math.inf
    return min(writes, reads)


def table(found: Iterable[Row]) -> list[str]:
    """Rows as aligned text lines: class, resource, spot, WCU and RCU per request."""
    lines = [f"{'class':<8} {'resource':<8} {'spots':>5} {'WCU/req':>8} {'RCU/req':>8}  partition | item"]
    for row in found:
        lines.append(
            f"{row.cls:<8} {row.resource:<8} {row.spots:>5} {row.wcu:>8.3f} {row.rcu:>8.3f}  {row.pattern}"
        )
    return lines


def exceeding(now: Iterable[Mapping[str, Any]], baseline: Iterable[Mapping[str, Any]]) -> list[str]:
    """Why the rows `now` cost more than the rows `baseline` (both as `Row.as_json`): one line for each class
    (`key`, `shared`) and kind of unit whose busiest spot takes more units per request than the baseline's busiest
    did, naming the spot."""
    problems = []
    for cls in ("key", "shared"):
        for kind in ("wcu", "rcu"):
            got, was = _busiest(now, cls, kind), _busiest(baseline, cls, kind)
            if got is not None and got[kind] > (was[kind] if was else 0.0) + 1e-9:
                where = f"{was['resource']} {was['pattern']}" if was else "none"
                problems.append(
                    f"{cls} spot {got['resource']} {got['pattern']}: {got[kind]} {kind.upper()} per request, "
                    f"above the baseline's busiest {cls} spot ({where}: {was[kind] if was else 0})"
                )
    return problems


def _busiest(found: Iterable[Mapping[str, Any]], cls: str, kind: str) -> Mapping[str, Any] | None:
    of_class = [row for row in found if row["cls"] == cls and row[kind]]
    return max(of_class, key=lambda row: float(row[kind]), default=None)

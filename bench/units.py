"""Write and read units per request per partition, and the request rates they allow: pure accounting over what a
run of requests consumed (`bench/ledger_wcu.py` runs them through the relay's own code against the local DynamoDB,
whose `throttling.py` charges every write and read).

The rules:

- a spot is what DynamoDB cannot spread: on the table an item (`pk`, `sk`; a Query's read is its partition's,
  `sk` "*"), on a global secondary index a partition key value. Each takes at most 1,000 write and 3,000 read
  units a second (an item never splits; an index partition splits by its sort key only as far as its items
  allow, so a partition key value is counted whole);
- a spot's class, from its name (`pk` and `sk` of a table item, the key of an index partition): `request` if it
  names one of the run's requests (its own item; a usage record, written once by its request), `key` if it names
  one of its keys, `shared` otherwise (one for the whole table: a day's usage, the `open` index's shards);
- a run's requests all happen at one instant (the limiter's clock and the requests' start held still), as the
  requests of one busy second do: a windowed item (a minute's rate counter, a day's spend) is the current
  window's, or the previous one's (`<minute-1>`), never two windows' added up;
- spots that differ only by the run's ids are one row (every request, or key, has the same spots), named by their
  pattern (`<request>`, `<key>`, `<minute>`, `<day>`, `<month>`, `<time>`); a shard suffix stays in the name, each
  shard a row of its own;
- a row's units per request are its units divided by the run's requests: a spot one request in four touches (a
  shard of four) comes out at a quarter of a request's writes, without knowing the layout;
- the ceilings: per key, 1,000 over the most write units a request puts on one `key` spot (3,000 over the most
  read units, if lower); table-wide the same over `shared` spots; the shards of one spot rated together, at
  `SPREAD` times their mean (`rated`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

#: How much busier than its mean the busiest of a family of shards is rated: at a ceiling's rate each shard sees a
#: hundred requests a second or more, and a hash spreads them within a few tens of percent of the mean.
SPREAD = 1.5
WRITE_UNITS_PER_S = 1000
READ_UNITS_PER_S = 3000
TABLE = "table"

Class = Literal["request", "key", "shared"]
CLASSES: tuple[Class, ...] = ("request", "key", "shared")

_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T[0-9:.]+Z?")
_SHARD = re.compile(r"#\d{1,5}(?=#|$| )")


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

    def __sub__(self, other: Units) -> Units:
        return Units(self.write - other.write, self.read - other.read)


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
    at: float  # the instant every request of the run happened (epoch seconds)
    consumed: Mapping[Spot, Units]


class Naming:
    """A spot's class and its name as a pattern, from the run's ids and instant."""

    def __init__(self, run: Run) -> None:
        self._requests = _alternation(run.requests)
        self._keys = _alternation(run.keys)
        minute, day = int(run.at // 60), time.gmtime(run.at)
        self._windows = [
            (_ISO_TIME, "<time>"),
            (re.compile(time.strftime("%Y-%m-%d", day)), "<day>"),
            (re.compile(time.strftime("%Y-%m", day)), "<month>"),
            (re.compile(rf"(?<!\d){minute}(?!\d)"), "<minute>"),
            (re.compile(rf"(?<!\d){minute - 1}(?!\d)"), "<minute-1>"),
        ]

    def cls(self, partition: str) -> Class:
        if self._requests.search(partition):
            return "request"
        return "key" if self._keys.search(partition) else "shared"

    def pattern(self, text: str) -> str:
        text = self._keys.sub("<key>", self._requests.sub("<request>", text))
        for window, name in self._windows:
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
        # an item named by a request (its own item, or a usage record under the key's partition) is written by that
        # request alone: per request, never shared with others (the whole partition is `partitions`)
        at = (spot.resource, naming.cls(name), naming.pattern(name))
        count, total = grouped.get(at, (0, Units()))
        grouped[at] = (count + 1, total + units)
    n = len(run.requests)
    out = [Row(r, c, p, count, total.write / n, total.read / n) for (r, c, p), (count, total) in grouped.items()]
    return sorted(out, key=lambda row: (CLASSES.index(row.cls), row.resource != TABLE, row.resource, row.pattern))


def partitions(run: Run) -> list[Row]:
    """The table's partitions whole (every item of a `pk` together): what a partition takes before DynamoDB splits
    it for heat. Shown beside the items, and rated for the ceiling before such a split."""
    whole: dict[Spot, Units] = {}
    for spot, units in run.consumed.items():
        if spot.resource == TABLE:
            at = Spot(TABLE, spot.partition)
            whole[at] = whole.get(at, Units()) + units
    return rows(Run(run.requests, run.keys, run.at, whole))


def hottest(found: Iterable[Row], cls: Class) -> Row | None:
    """The spot of `cls` that allows the fewest requests a second, a family of shards rated as one (`rated`)."""
    of_class = [row for row in rated(found) if row.cls == cls and (row.wcu or row.rcu)]
    return min(of_class, key=_rate, default=None)


def rated(found: Iterable[Row]) -> list[Row]:
    """The spots as the ceilings see them: a spot alone as it is; the shards of one spot (names that differ only by a
    `#<number>` suffix, the unsuffixed one included) as one row, at `SPREAD` times their mean. Requests reach the
    shards by a hash of their ids, so at the rates a ceiling is about (hundreds a second on each shard) the busiest
    shard stays near the mean; a sample of a few hundred requests leaves some shards with several times their share,
    and rating by its busiest shard would measure the sample, not the layout."""
    out = []
    for (resource, cls, name), members in _families(found, "").items():
        if len(members) == 1:
            out.extend(members)
            continue
        # the family's size from the highest shard number seen (shards are numbered from 0; the unsuffixed spot is
        # shard 0): a small sample reaches only some of many shards, and its mean over those would overstate them
        numbers = [int(m.group()[1:]) for row in members for m in _SHARD.finditer(row.pattern)]
        size = max(len(members), max(numbers, default=0) + 1)
        wcu = SPREAD * sum(row.wcu for row in members) / size
        rcu = SPREAD * sum(row.rcu for row in members) / size
        spots = sum(row.spots for row in members)
        out.append(Row(resource, cls, f"{name}#<shard>  ({SPREAD:g} x the mean of {size})", spots, wcu, rcu))
    return out


def _families(found: Iterable[Row], shard: str) -> dict[tuple[str, Class, str], list[Row]]:
    """Rows grouped by spot with their shard suffix (`#<number>`) replaced by `shard`: a spot's shards together."""
    groups: dict[tuple[str, Class, str], list[Row]] = {}
    for row in found:
        groups.setdefault((row.resource, row.cls, _SHARD.sub(shard, row.pattern)), []).append(row)
    return groups


def ceiling(row: Row | None) -> int | None:
    """Requests a second the spot takes (None: no spot of the class, no ceiling from it)."""
    return None if row is None else math.floor(_rate(row))


def _rate(row: Row) -> float:
    writes = WRITE_UNITS_PER_S / row.wcu if row.wcu else math.inf
    reads = READ_UNITS_PER_S / row.rcu if row.rcu else math.inf
    return min(writes, reads)


def collapse(found: Iterable[Row]) -> list[Row]:
    """For reading: the shards of one spot (names that differ only by a `#<number>` suffix) as one row, the busiest
    shard's units, named `<shard>` with the busiest one's name beside it."""
    out = []
    for (resource, cls, name), members in _families(found, "#<shard>").items():
        if len(members) == 1:
            out.extend(members)
            continue
        busiest = min(members, key=_rate)
        spots = sum(row.spots for row in members)
        pattern = f"{name}  (busiest of {len(members)}: {busiest.pattern})"
        out.append(Row(resource, cls, pattern, spots, busiest.wcu, busiest.rcu))
    return out


def table(found: Iterable[Row]) -> list[str]:
    """Rows as aligned text lines: class, resource, spot, WCU and RCU per request."""
    lines = [f"{'class':<8} {'resource':<8} {'spots':>5} {'WCU/req':>8} {'RCU/req':>8}  partition | item"]
    for row in found:
        lines.append(f"{row.cls:<8} {row.resource:<8} {row.spots:>5} {row.wcu:>8.3f} {row.rcu:>8.3f}  {row.pattern}")
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

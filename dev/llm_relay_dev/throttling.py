"""DynamoDB's per-partition throughput, as pure accounting: what a request costs and whether its partitions can take
it this second (`make dynamodb THROTTLE=1`; `throttled_front.py` applies it to the local moto).

What DynamoDB does, and this module counts:

- every partition key value, of the table and separately of each global secondary index, takes at most 1,000
  write units and 3,000 read units a second, in on-demand mode as in provisioned (a "key range" limit);
- a write costs 1 unit per started KB of the larger of the item before and after it (1 at least); inside
  TransactWriteItems twice that, a ConditionCheck included;
- an index entry write costs 1 unit per started KB of the projected entry, on the index's partition (the item's
  index key): a new or removed entry one write, a changed index key a delete on the old partition and a put on the
  new; a write that changes nothing the index holds costs the index nothing. Index writes are not doubled inside a
  transaction (the index is updated after it, as for any write);
- a strongly consistent read costs 1 unit per started 4 KB, an eventually consistent one half; a Query costs by
  the total size it read, rounded up once per 4 KB.

The window is fixed: simulated second `n` is `[n, n + 1)` of `clock() / scale`, aligned for every partition, and
each partition's units in it are counted from zero. A request fits when its units fit what is left, or when the
partition has used nothing yet this second (so an item larger than a tiny test capacity can still be written once
a second). A fixed window admits up to twice the capacity across a window's edge, as DynamoDB's short bursts do.

`scale` slows time down for a simulation: with `scale=100`, one simulated second lasts 100 wall seconds, so a
partition takes 1,000 write units per 100 wall seconds (10 a wall second on average, up to 1,000 at once), and a
load played at 100 requests a wall second stands for 10,000 a second. `scale=0.1` speeds time up (tests).

Sizes follow DynamoDB's rules on the wire format (`{"S": ...}`, `{"N": ...}`): attribute names plus values, a
number 1 byte per two significant digits plus 1, a binary its raw bytes, a list or map 3 bytes plus 1 per element.
"""

from __future__ import annotations

import base64
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

WRITE_UNITS_PER_S = 1000
READ_UNITS_PER_S = 3000
WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096

Kind = Literal["read", "write"]
Item = dict[str, Any]  # an item in DynamoDB's wire format: name -> {"S": ...}


def value_size(value: dict[str, Any]) -> int:
    """DynamoDB's size of one attribute value (`{"S": "abc"}`), in bytes."""
    (kind, raw), *_ = value.items()
    if kind == "S":
        return len(str(raw).encode())
    if kind == "N":
        return number_size(str(raw))
    if kind == "B":
        return len(_raw_bytes(raw))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(v).encode()) for v in raw)
    if kind == "NS":
        return sum(number_size(str(v)) for v in raw)
    if kind == "BS":
        return sum(len(_raw_bytes(v)) for v in raw)
    if kind == "L":
        return 3 + sum(value_size(v) + 1 for v in raw)
    if kind == "M":
        return 3 + sum(len(k.encode()) + value_size(v) + 1 for k, v in raw.items())
    raise ValueError(f"unknown DynamoDB type {kind}")


def number_size(text: str) -> int:
    """1 byte per two significant digits (leading and trailing zeros trimmed), plus 1."""
    mantissa = text.lstrip("+-").lower().split("e", 1)[0].replace(".", "")
    digits = len(mantissa.strip("0")) or 1
    return math.ceil(digits / 2) + 1


def _raw_bytes(raw: Any) -> bytes:
    return raw if isinstance(raw, bytes) else base64.b64decode(raw)


def item_size(item: Item | None) -> int:
    """Attribute names plus values, in bytes; 0 for no item."""
    return sum(len(name.encode()) + value_size(value) for name, value in (item or {}).items())


def write_units(size: int, *, transactional: bool = False) -> int:
    return math.ceil(max(size, 1) / WRITE_UNIT_BYTES) * (2 if transactional else 1)


def read_units(size: int, *, consistent: bool, transactional: bool = False) -> float:
    units = math.ceil(max(size, 1) / READ_UNIT_BYTES) * (2 if transactional else 1)
    return float(units) if consistent or transactional else units / 2


@dataclass(frozen=True)
class Index:
    """A global secondary index: its key, and what its entries hold (ALL, KEYS_ONLY, or INCLUDE `included`)."""

    name: str
    hash_key: str
    range_key: str | None = None
    projection: str = "ALL"
    included: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schema:
    table: str
    hash_key: str
    range_key: str | None = None
    indexes: tuple[Index, ...] = ()

    def index(self, name: str) -> Index:
        return next(index for index in self.indexes if index.name == name)

    def key_of(self, item: Item) -> Item:
        return {name: item[name] for name in (self.hash_key, self.range_key) if name is not None}

    def projected(self, index: Index, item: Item) -> Item:
        """The index entry of `item`: what a write to the index writes and a Query of the index reads."""
        if index.projection == "ALL":
            return item
        names = {self.hash_key, self.range_key, index.hash_key, index.range_key, *index.included}
        return {name: value for name, value in item.items() if name in names}


@dataclass(frozen=True)
class Charge:
    """Units one request takes from one partition: `resource` is the table's name or `<table>/index/<name>`.
    `item`: on the table, the sort key value of the item charged (its partition key is `partition`; "" for a table
    without a sort key, "*" for a Query's read of the partition), so the units an item takes can be told apart
    from its partition's; None on an index. Not compared: it changes nothing a charge takes from its partition."""

    kind: Kind
    resource: str
    partition: str
    units: float
    item: str | None = field(default=None, compare=False)


def partition_of(value: dict[str, Any]) -> str:
    """A partition key value as one string (the value itself, whatever its type)."""
    (raw,) = value.values()
    return raw if isinstance(raw, str) else base64.b64encode(raw).decode()


def sort_of(schema: Schema, key: Item) -> str:
    """A table item's sort key value as one string ("" for a table without a sort key)."""
    return partition_of(key[schema.range_key]) if schema.range_key is not None else ""


def index_resource(table: str, index: str) -> str:
    return f"{table}/index/{index}"


def write_charges(
    schema: Schema, key: Item, before: Item | None, after: Item | None, *, transactional: bool
) -> list[Charge]:
    """The units one write of the item at `key` takes: from the table's partition (1 at least, a delete of nothing
    included), and from each index partition it updates."""
    units = write_units(max(item_size(before), item_size(after)), transactional=transactional)
    table = Charge("write", schema.table, partition_of(key[schema.hash_key]), units, sort_of(schema, key))
    return [table, *(c for index in schema.indexes for c in _index_charges(schema, index, before, after))]


def _index_charges(schema: Schema, index: Index, before: Item | None, after: Item | None) -> list[Charge]:
    names = [name for name in (index.hash_key, index.range_key) if name is not None]
    old = _entry(schema, index, before, names)
    new = _entry(schema, index, after, names)
    if old == new:
        return []  # not in the index, or nothing the index holds changed
    resource = index_resource(schema.table, index.name)
    charges = []
    moved = old is not None and new is not None and any(old[n] != new[n] for n in names)
    if old is not None and (new is None or moved):
        charges.append(Charge("write", resource, partition_of(old[index.hash_key]), write_units(item_size(old))))
    if new is not None:
        size = item_size(new) if moved or old is None else max(item_size(old), item_size(new))
        charges.append(Charge("write", resource, partition_of(new[index.hash_key]), write_units(size)))
    return charges


def _entry(schema: Schema, index: Index, item: Item | None, names: list[str]) -> Item | None:
    if item is None or any(name not in item for name in names):
        return None  # sparse: an item without the index's key attributes is not in the index
    return schema.projected(index, item)


def read_charge(
    resource: str, partition: str, size: int, *, consistent: bool, transactional: bool = False, item: str | None = None
) -> Charge:
    units = read_units(size, consistent=consistent, transactional=transactional)
    return Charge("read", resource, partition, units, item)


@dataclass
class Throttle:
    """Per-partition windows and what they let through. `consumed` (units) and `throttled` (requests refused) are
    counted by (resource, partition) for whoever reads them: tests, the simulation benchmark; the table's units
    also by item (resource, partition, sort key) in `consumed_*_items`, the unit DynamoDB never splits
    (`bench/ledger_wcu.py`)."""

    write_units_per_s: float = WRITE_UNITS_PER_S
    read_units_per_s: float = READ_UNITS_PER_S
    scale: float = 1.0
    clock: Callable[[], float] = time.monotonic
    consumed_write: dict[tuple[str, str], float] = field(default_factory=dict)
    consumed_read: dict[tuple[str, str], float] = field(default_factory=dict)
    throttled: Counter[tuple[str, str]] = field(default_factory=Counter)
    consumed_write_items: dict[tuple[str, str, str], float] = field(default_factory=dict)
    consumed_read_items: dict[tuple[str, str, str], float] = field(default_factory=dict)
    # The most write units one resource (the table, an index) took in one window over all its partitions: what a
    # layout that put them on one partition would have asked of it.
    peak_write: dict[str, float] = field(default_factory=dict)
    _window: int = field(default=-1, repr=False)
    _used: dict[tuple[Kind, str, str], float] = field(default_factory=dict, repr=False)
    _resource_window: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.write_units_per_s <= 0 or self.read_units_per_s <= 0:
            raise ValueError("capacities and scale must be positive")

    def admit(self, groups: Sequence[Sequence[Charge]], *, all_or_nothing: bool = True) -> list[list[Charge]]:
        """For each group (one item of a request), the charges its partitions cannot take now ([] if it fits).

        `all_or_nothing` (a single-item call, a transaction): if one group does not fit, nothing is consumed.
        Otherwise (BatchGetItem) the groups that fit are consumed and the others are left unprocessed."""
        self._roll()
        tentative: dict[tuple[Kind, str, str], float] = {}
        refused: list[list[Charge]] = []
        for group in groups:
            over = [c for c in group if not self._fits(c, tentative, group)]
            refused.append(over)
            if not over:
                for charge in group:
                    slot = (charge.kind, charge.resource, charge.partition)
                    tentative[slot] = tentative.get(slot, 0.0) + charge.units
        if all_or_nothing and any(refused):
            self._count_refused(refused)
            return refused
        self._count_refused(refused)
        for group, over in zip(groups, refused, strict=True):
            if not over:
                self._consume(group)
        return refused

    def _fits(self, charge: Charge, tentative: dict[tuple[Kind, str, str], float], group: Sequence[Charge]) -> bool:
        slot = (charge.kind, charge.resource, charge.partition)
        used = self._used.get(slot, 0.0) + tentative.get(slot, 0.0)
        # the group's own charges to the same partition (an index entry moved within one partition) add up
        wanted = sum(c.units for c in group if (c.kind, c.resource, c.partition) == slot)
        capacity = self.write_units_per_s if charge.kind == "write" else self.read_units_per_s
        return used == 0 or used + wanted <= capacity

    def _count_refused(self, refused: list[list[Charge]]) -> None:
        for over in refused:
            for slot in {(c.resource, c.partition) for c in over}:
                self.throttled[slot] += 1

    def _consume(self, group: Sequence[Charge]) -> None:
        for charge in group:
            if charge.kind == "write":
                in_window = self._resource_window.get(charge.resource, 0.0) + charge.units
                self._resource_window[charge.resource] = in_window
                self.peak_write[charge.resource] = max(self.peak_write.get(charge.resource, 0.0), in_window)
            slot = (charge.kind, charge.resource, charge.partition)
            self._used[slot] = self._used.get(slot, 0.0) + charge.units
            consumed = self.consumed_write if charge.kind == "write" else self.consumed_read
            at = (charge.resource, charge.partition)
            consumed[at] = consumed.get(at, 0.0) + charge.units
            if charge.item is not None:
                items = self.consumed_write_items if charge.kind == "write" else self.consumed_read_items
                item = (charge.resource, charge.partition, charge.item)
                items[item] = items.get(item, 0.0) + charge.units

    def _roll(self) -> None:
        window = math.floor(self.clock() / self.scale)
        if window != self._window:
            self._window = window
            self._used.clear()
            self._resource_window.clear()

    def seconds_left(self) -> float:
        """Wall seconds until the next window (a simulated second) begins."""
        now = self.clock() / self.scale
        return (math.floor(now) + 1 - now) * self.scale

    def stats(self) -> dict[str, Any]:
        """The counters as JSON: `{"throttled": [{"resource", "partition", "count"}], "consumed_write": [...], ...,
        "consumed_write_items": [{"resource", "partition", "item", "units"}], ...}`."""

        def rows(counter: dict[tuple[str, str], float] | Counter[tuple[str, str]], name: str) -> list[dict[str, Any]]:
            return [{"resource": r, "partition": p, name: v} for (r, p), v in sorted(counter.items())]

        def item_rows(counter: dict[tuple[str, str, str], float]) -> list[dict[str, Any]]:
            return [{"resource": r, "partition": p, "item": i, "units": v} for (r, p, i), v in sorted(counter.items())]

        return {
            "throttled": rows(self.throttled, "count"),
            "consumed_write": rows(self.consumed_write, "units"),
            "consumed_read": rows(self.consumed_read, "units"),
            "consumed_write_items": item_rows(self.consumed_write_items),
            "consumed_read_items": item_rows(self.consumed_read_items),
        }

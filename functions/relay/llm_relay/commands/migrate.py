"""`llm-relay migrate [--dry-run]`: bring a table written by relay 0.1 to today's layout. Run it once after every
relay runs this version; running it again changes nothing.

0.1 kept each stream's concurrency lease on the key's count item (`KEY#<key>` / `CONC`: `active` and one
`l_<request id>` attribute per lease). Today the count is a bare `active` and each lease lives on its request item
(the sparse `leases` index), so a 0.1 lease is never given back: a count that still holds one refuses the key's
streams for good. The migration sets each key's `active` to its requests that hold a slot on the `leases` index and
removes the `l_*` attributes. Each write is conditional on the count being what it read, so an admission or a
settlement that runs meanwhile makes it count that key again instead of losing its change.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..dynamo.limits_store import V01_LEASE_PREFIX
from .output import print_json, print_table

if TYPE_CHECKING:
    from ..dynamo import Stores
    from ..settings import Settings

ROUNDS = 5  # a key whose count keeps changing under the migration is counted again, this many times at most
# Between reading a key's count and reading its leases: a request admitted just before the count was read is on the
# (eventually consistent) `leases` index by then, so it is counted, not left out of `active` for good.
INDEX_SETTLE_S = 1.0


@dataclass(frozen=True, slots=True)
class KeyCount:
    """One key's count item as read, and what it should be."""

    key_id: str
    active: int | None  # as read (None: no `active` yet)
    holders: int  # requests holding one of its slots, on the `leases` index
    dropped: tuple[str, ...]  # 0.1's lease attributes on it

    @property
    def current(self) -> bool:
        return (self.active or 0) == self.holders and not self.dropped

    def as_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "active_before": self.active,
            "active_after": self.holders,
            "v01_leases_dropped": len(self.dropped),
        }


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = commands.add_parser(
        "migrate", help="bring a 0.1 table to this version's layout (recount concurrency, drop 0.1 leases)"
    )
    migrate.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    migrate.add_argument("--json", action="store_true", help="machine-readable output")
    migrate.set_defaults(run=_migrate)


def _migrate(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    pending = stores.limits.concurrency_key_ids()
    changed: list[KeyCount] = []
    current = 0
    for _ in range(ROUNDS):
        if not pending:
            break
        counts = _count(stores, pending)
        current += sum(1 for count in counts if count.current)
        todo = [count for count in counts if not count.current]
        if args.dry_run:
            changed, pending = todo, []
            break
        written = [count for count in todo if _write(stores, count)]
        changed += written
        pending = [count.key_id for count in todo if count not in written]
    _print(args, changed, current, busy=pending)
    return 1 if pending else 0


def _count(stores: Stores, key_ids: list[str]) -> list[KeyCount]:
    """Each key's count item, then (once the index has caught up with it) the requests holding its slots."""
    items = {key_id: stores.limits.concurrency_item(key_id) or {} for key_id in key_ids}
    time.sleep(INDEX_SETTLE_S)
    counts = []
    for key_id, item in items.items():
        active = item.get("active")
        dropped = tuple(sorted(name for name in item if name.startswith(V01_LEASE_PREFIX)))
        holders = len(stores.requests.slot_holders(key_id))
        counts.append(KeyCount(key_id, None if active is None else int(active), holders, dropped))
    return counts


def _write(stores: Stores, count: KeyCount) -> bool:
    return stores.limits.recount(count.key_id, count.holders, count.active, list(count.dropped))


def _print(args: argparse.Namespace, changed: list[KeyCount], current: int, *, busy: list[str]) -> None:
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "changed": [count.as_json() for count in changed],
                "already_current": current,
                "busy": busy,
            }
        )
        return
    verb = "would change" if args.dry_run else "changed"
    print(f"{verb} {len(changed)} key(s); {current} already current")
    if changed:
        print_table(["key_id", "active before", "active after", "0.1 leases dropped"], [_row(c) for c in changed])
    if busy:
        print(f"{len(busy)} key(s) kept changing while being counted ({', '.join(busy)}): run it again")


def _row(count: KeyCount) -> list[str]:
    before = "-" if count.active is None else str(count.active)
    return [count.key_id, before, str(count.holders), str(len(count.dropped))]

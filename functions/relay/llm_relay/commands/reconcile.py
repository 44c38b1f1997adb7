"""`llm-relay reconcile`: settle every request whose lease expired without a finish (its relay stopped) as
`lost`, exactly once whoever else runs it (the scheduled function, another operator), and print them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..pricing import PriceTable
from ..reconciler import Reconciler
from .output import print_json, print_table
from .usage import RECORD_HEADERS, record_cells

if TYPE_CHECKING:
    from ..dynamo import Stores
    from ..settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reconcile = commands.add_parser("reconcile", help="settle requests whose relay stopped as lost; print them")
    reconcile.add_argument("--json", action="store_true", help="machine-readable output")
    reconcile.set_defaults(run=_reconcile)


def _reconcile(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    done = Reconciler(stores, PriceTable.load(settings.prices_json), settings.usage_retention_days).run()
    if args.json:
        print_json({"settled": [record.as_json() for record in done.settled], "skipped": done.skipped})
        return 0
    print(f"settled {len(done.settled)} request(s) as lost; {done.skipped} already settled by someone else")
    if done.settled:
        print_table(RECORD_HEADERS, [record_cells(record) for record in done.settled])
    return 0

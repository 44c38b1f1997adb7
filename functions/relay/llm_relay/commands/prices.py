"""`llm-relay prices [MODEL]`: the per-million prices the relay charges (the packaged table generated from
genai-prices, with `RELAY_PRICES_JSON` on top) and where each comes from. Reads no DynamoDB."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..pricing import PriceTable
from .common import CliError
from .output import plain, print_json, print_table, printable

if TYPE_CHECKING:
    from ..settings import Settings

HEADERS = ["MODEL", "INPUT $/M", "CACHED $/M", "OUTPUT $/M", "SOURCE"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prices = commands.add_parser(
        "prices", help="the prices the relay charges (USD per million tokens), and their source"
    )
    prices.add_argument("model", nargs="?", help="one model, as a request names it (default: every priced model)")
    prices.add_argument("--json", action="store_true", help="machine-readable output")
    prices.set_defaults(run_local=_prices)


def _prices(args: argparse.Namespace, settings: Settings) -> int:
    try:
        table = PriceTable.load(settings.prices_json)
    except ValueError as exc:
        raise CliError(f"RELAY_PRICES_JSON: {exc}") from None
    entries = table.models if args.model is None else [_entry(table, args.model)]
    rows = [_row(table, entry) for entry in entries]
    if args.json:
        print_json(rows)
    else:
        print_table(HEADERS, [[printable(str(value)) for value in row.values()] for row in rows])
    return 0


def _entry(table: PriceTable, model: str) -> str:
    entry = table.entry_for(model)
    if entry is None:
        raise CliError(
            f"no price for {model!r}: a key with a budget is refused it (RELAY_UNPRICED_MODELS=refuse); "
            "add one with RELAY_PRICES_JSON"
        )
    return entry


def _row(table: PriceTable, entry: str) -> dict[str, Any]:
    price = table.price_of(entry)
    assert price is not None  # an entry of the table has a price
    return {
        "model": entry,
        "input": plain(price.input),
        "cached_input": plain(price.cached_input),
        "output": plain(price.output),
        "source": table.source_of(entry),
    }

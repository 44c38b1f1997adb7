"""Generate the relay's price table (`llm_relay/prices.json`) from the `genai-prices` package, at build time.

`genai-prices` (Pydantic's maintained price data) is a dev dependency, pinned in constraints.txt; the function never
imports it: `import genai_prices` and its first lookup cost about 0.7 s of cold start, for data that only changes
when the pinned version does. So the table is generated here, committed, and shipped as package data;
tests/packaging/test_prices.py regenerates it and fails when it no longer matches the library.

For every model name the library knows (each model's id and the exact names it matches), the library itself picks
the provider and resolves the price in force (`calc_price`), as it would for a request; the table keeps USD per
million input, cached-input and output tokens. Tiered prices keep their base tier (see docs/limits.md, the worst
case). Models without both an input and an output token price (image, audio, embedding-only) are left out.

    python -m llm_relay_dev.price_table            # rewrite functions/relay/llm_relay/prices.json (make prices)
    python -m llm_relay_dev.price_table --check    # exit 1 if the file differs from what the library gives
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices import data_snapshot, types

TABLE = Path(__file__).resolve().parents[2] / "functions" / "relay" / "llm_relay" / "prices.json"
SOURCE = f"genai-prices {genai_prices.__version__}"


def model_names() -> list[str]:
    """Every name the library matches exactly: each model's id, and the names in its `equals` clauses."""
    names: set[str] = set()
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            names.add(model.id)
            names.update(_equals(model.match))
    return sorted(names)


def _equals(clause: Any) -> list[str]:
    if isinstance(clause, types.ClauseEquals):
        return [clause.equals]
    if isinstance(clause, types.ClauseOr):
        return [name for sub in clause.or_ for name in _equals(sub)]
    return []


def price_of(name: str) -> dict[str, str] | None:
    """The per-million prices the library charges for `name` now, as the relay's table holds them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calc = genai_prices.calc_price(genai_prices.Usage(input_tokens=1, output_tokens=1), name)
    except LookupError:
        return None
    price = calc.model_price
    values = {"input": _base(price.input_mtok), "output": _base(price.output_mtok)}
    if values["input"] is None or values["output"] is None:
        return None
    entry = {field: format(value, "f") for field, value in values.items() if value is not None}
    cached = _base(price.cache_read_mtok)
    if cached is not None and cached != values["input"]:
        entry["cached_input"] = format(cached, "f")
    entry["provider"] = calc.provider.id
    return entry


def _base(value: Decimal | types.TieredPrices | None) -> Decimal | None:
    if isinstance(value, types.TieredPrices):
        return value.base
    return value


def generate() -> dict[str, Any]:
    models = {name: entry for name in model_names() if (entry := price_of(name)) is not None}
    return {
        "_source": SOURCE,
        "_unit": "USD per 1 million tokens; cached_input defaults to input when absent",
        "_generated_by": "python -m llm_relay_dev.price_table (make prices); do not edit by hand",
        "_override": "RELAY_PRICES_JSON: a JSON object like this one (or a path to a file holding it); its models "
        "replace these entry by entry",
        "models": models,
    }


def render(table: dict[str, Any]) -> str:
    """One model a line, sorted: a version bump reads as a diff of prices."""
    notes = {k: v for k, v in table.items() if k != "models"}
    lines = [json.dumps(notes, indent=2)[:-2] + ","]
    lines.append('  "models": {')
    rows = [f"    {json.dumps(name)}: {json.dumps(entry)}" for name, entry in table["models"].items()]
    lines.append(",\n".join(rows))
    lines.append("  }\n}\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed table instead of writing")
    args = parser.parse_args(argv)
    text = render(generate())
    if args.check:
        same = TABLE.read_text(encoding="utf-8") == text
        print(f"{TABLE}: {'matches' if same else 'DIFFERS from'} {SOURCE}")
        return 0 if same else 1
    TABLE.write_text(text, encoding="utf-8")
    print(f"{TABLE}: {len(text.splitlines())} lines from {SOURCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

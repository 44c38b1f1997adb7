"""Generate the relay's price table (`llm_relay/prices.json`) from the `genai-prices` package, at build time.

`genai-prices` (Pydantic's maintained price data) is a dev dependency, pinned in constraints.txt; the function never
imports it: `import genai_prices` and its first lookup cost about 0.7 s of cold start, for data that only changes
when the pinned version does. So the table is generated here, committed, and shipped as package data;
tests/packaging/test_prices.py regenerates it and fails when it no longer matches the library.

For every model name the library knows (each model's id and the exact names it matches), the library itself picks
the provider and resolves the price in force on `AS_OF` (`calc_price`), as it would for a request; the table keeps
USD per million input, cached-input and output tokens. A price that depends on the time of day (DeepSeek's
off-peak hours) keeps its highest rate, so a budget is never undercharged. The date is fixed, not today, so the
table (and the test that regenerates it) depends only on the pinned version: move `AS_OF` with the version, and
prices the library schedules after it count from then. Tiered prices keep their base tier (see docs/limits.md,
the worst case). Models without both an input and an output token price (image, audio) are left out, except
embedding models (an input price, and "embed" in the name), priced with output at 0: they bill input tokens only.

Amazon Bedrock's models (the library's `aws` provider) are only found when the provider is named, so they are
added apart, under the ids Bedrock's API takes: the library's `regional.` prefix stands for a cross-region
inference profile (`us.`, `eu.`, ...), which the relay's pricing strips, so the id without it is the entry; a
model the library only matches behind a profile is priced as `us.<id>`. They never replace an entry the
provider-less lookup gave.

    python -m llm_relay_dev.price_table            # rewrite functions/relay/llm_relay/prices.json (make prices)
    python -m llm_relay_dev.price_table --check    # exit 1 if the file differs from what the library gives
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices import data_snapshot, types

TABLE = Path(__file__).resolve().parents[2] / "functions" / "relay" / "llm_relay" / "prices.json"
SOURCE = f"genai-prices {genai_prices.__version__}"
AS_OF = datetime(2026, 11, 30, tzinfo=UTC)  # the day genai-prices 0.2.3 was pinned
_HALF_HOURS = [AS_OF + timedelta(minutes=30 * i) for i in range(48)]


def embedding_models() -> dict[str, str]:
    """Embedding models (`embed` in the id) by provider: the library finds OpenAI's `text-embedding-3-small` only
    when told its provider, since no provider claims the name by its pattern."""
    return {
        model.id: provider.id
        for provider in data_snapshot.get_snapshot().providers
        if provider.id != BEDROCK
        for model in provider.models
        if "embed" in model.id
    }


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


BEDROCK = "aws"
_REGIONAL = "regional."


def bedrock_names() -> dict[str, str]:
    """Bedrock's API id of each `aws` model → the name the library prices it by."""
    provider = next(p for p in data_snapshot.get_snapshot().providers if p.id == BEDROCK)
    names: dict[str, str] = {}
    for model in provider.models:
        api_id = model.id.removeprefix(_REGIONAL)
        for name in (api_id, f"us.{api_id}"):
            calc = _calc(name, AS_OF, BEDROCK)
            if calc is not None and calc.model.id == model.id:
                names[api_id] = name
                break
    return names


def price_of(name: str, provider_id: str | None = None) -> dict[str, str] | None:
    """The per-million prices the library charges for `name` (at `provider_id`, or the provider it picks) on
    `AS_OF` (the day's highest where they vary by the time of day), as the relay's table holds them."""
    first = _calc(name, AS_OF, provider_id)
    if first is None:
        return None
    prices = [first.model_price]
    if _varies_by_time_of_day(first.model):
        prices = [calc.model_price for at in _HALF_HOURS if (calc := _calc(name, at, provider_id)) is not None]
    values = {field: _highest(prices, field) for field in ("input_mtok", "output_mtok", "cache_read_mtok")}
    if values["input_mtok"] is None or (values["output_mtok"] is None and "embed" not in name):
        return None
    if values["output_mtok"] is None:  # an embedding model: input tokens only (`POST /v1/embeddings`)
        values["output_mtok"] = Decimal(0)
    entry = {"input": format(values["input_mtok"], "f"), "output": format(values["output_mtok"], "f")}
    cached = values["cache_read_mtok"]
    if cached is not None and cached != values["input_mtok"]:
        entry["cached_input"] = format(cached, "f")
    entry["provider"] = first.provider.id
    return entry


def _calc(name: str, at: datetime, provider_id: str | None = None) -> types.PriceCalculation | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            usage = genai_prices.Usage(input_tokens=1, output_tokens=1)
            return genai_prices.calc_price(usage, name, provider_id=provider_id, genai_request_timestamp=at)
    except LookupError:
        return None


def _varies_by_time_of_day(model: types.ModelInfo) -> bool:
    prices = model.prices
    return isinstance(prices, list) and any(isinstance(p.constraint, types.TimeOfDateConstraint) for p in prices)


def _highest(prices: list[types.ModelPrice], field: str) -> Decimal | None:
    values = [v for price in prices if (v := _base(getattr(price, field))) is not None]
    return max(values) if values else None


def _base(value: Decimal | types.TieredPrices | None) -> Decimal | None:
    if isinstance(value, types.TieredPrices):
        return value.base
    return value


def generate() -> dict[str, Any]:
    models = {name: entry for name in model_names() if (entry := price_of(name)) is not None}
    for api_id, name in bedrock_names().items():
        if api_id not in models and (entry := price_of(name, BEDROCK)) is not None:
            models[api_id] = entry
    for name, provider in embedding_models().items():  # found only when their provider is named
        if name not in models and (entry := price_of(name, provider)) is not None:
            models[name] = entry
    models = dict(sorted(models.items()))
    return {
        "_source": SOURCE,
        "_as_of": AS_OF.date().isoformat(),
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

"""Pricing (pure): the cost in USD of one request from its token usage, as a Decimal (never a float).

Prices per million input, cached-input and output tokens ship as package data (`prices.json`, generated from
the pinned `genai-prices` package at build time by `llm_relay_dev.price_table`; the function never imports the
library, whose import and first lookup would cost cold start); `RELAY_PRICES_JSON` (a JSON object, or the path
of a file holding one) replaces them model by model. A model without a price costs None ("unknown"): it is
logged once per process and reported to an optional hook (a metric), never an error.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from .metering import Usage

logger = logging.getLogger(__name__)

PER_TOKENS = Decimal(1_000_000)


class Pricer(Protocol):
    """The relay's one source of prices (`PriceTable`): what a model's usage costs, and what its tokens cost."""

    def __call__(self, model: str, usage: Usage) -> Decimal | None:
        """The cost of a model's usage in USD; None when the model has no price."""
        ...

    def price_of(self, model: str) -> ModelPrice | None:
        """The model's price per million tokens; None when it has none."""
        ...


_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")
# A Bedrock cross-region inference profile costs what the model costs in its own region. Not `global.`: the
# price data prices global profiles apart (they cost less).
_BEDROCK_PROFILE = re.compile(r"^(?:us|us-gov|eu|apac|jp|au|ca|in)\.(?=[a-z0-9-]+\.)")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens."""

    input: Decimal
    cached_input: Decimal
    output: Decimal

    def cost(self, usage: Usage) -> Decimal:
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        total = (
            (usage.prompt_tokens - cached) * self.input
            + cached * self.cached_input
            + usage.completion_tokens * self.output
        )
        return total / PER_TOKENS


def highest(prices: list[ModelPrice]) -> ModelPrice:
    """Each rate at its highest among `prices`: what a budget reserves for a request that any of these models may
    answer (a route and its fallbacks), so that none of them can overspend it."""
    return ModelPrice(
        input=max(p.input for p in prices),
        cached_input=max(p.cached_input for p in prices),
        output=max(p.output for p in prices),
    )


class PriceTable:
    """Callable as the relay's `Pricer`: `table(model, usage) -> Decimal | None`."""

    def __init__(
        self,
        prices: Mapping[str, ModelPrice],
        on_unknown: Callable[[str], None] | None = None,
        overridden: frozenset[str] = frozenset(),
    ) -> None:
        self._prices = dict(prices)
        self._on_unknown = on_unknown
        self._warned: set[str] = set()
        self._overridden = overridden  # the models RELAY_PRICES_JSON priced
        self._packaged: dict[str, Any] | None = None  # the packaged file, read again only for `source_of`

    @classmethod
    def load(cls, override: str | None = None, on_unknown: Callable[[str], None] | None = None) -> PriceTable:
        """The packaged prices, with `override` (JSON text or a file path; see module doc) on top.
        Raises ValueError for an override that cannot be read, so a bad configuration fails at start-up."""
        prices = parse_prices(_packaged_text())
        overridden: frozenset[str] = frozenset()
        if override is not None and override.strip():
            overrides = parse_prices(_override_text(override.strip()))
            prices.update(overrides)
            overridden = frozenset(overrides)
        return cls(prices, on_unknown, overridden)

    @property
    def models(self) -> list[str]:
        return sorted(self._prices)

    def price_of(self, model: str) -> ModelPrice | None:
        """Exact name first, then without a Bedrock cross-region profile (`us.`, `eu.`, ...), a provider prefix
        (`openai/`) and a date suffix (`-2024-08-06`, `-20241022`)."""
        entry = self.entry_for(model)
        return None if entry is None else self._prices[entry]

    def entry_for(self, model: str) -> str | None:
        """The name of the table entry that prices `model` (None: no price)."""
        return next((c for c in _candidates(model) if c in self._prices), None)

    def source_of(self, entry: str) -> str:
        """Where an entry's price comes from: the override, or the packaged table's source (and provider). Reads
        the packaged file again: for the CLI, never on a request's path."""
        if entry in self._overridden:
            return "RELAY_PRICES_JSON"
        if self._packaged is None:
            self._packaged = json.loads(_packaged_text())
        provider = (self._packaged.get("models", {}).get(entry) or {}).get("provider")
        source = str(self._packaged.get("_source", "packaged prices.json"))
        return f"{source} ({provider})" if provider else source

    def __call__(self, model: str, usage: Usage) -> Decimal | None:
        price = self.price_of(model)
        if price is None:
            self._unknown(model)
            return None
        return price.cost(usage)

    def _unknown(self, model: str) -> None:
        if model not in self._warned and len(self._warned) < 1000:
            self._warned.add(model)
            logger.warning("no price for model %r: its cost is recorded as unknown", model)
        if self._on_unknown is not None:
            try:
                self._on_unknown(model)
            except Exception:
                logger.exception("unknown-model hook failed")


def parse_prices(text: str) -> dict[str, ModelPrice]:
    """Prices from JSON: `{"models": {name: {"input", "cached_input"?, "output"}}}` or the bare mapping.
    Keys starting with `_` are notes."""
    try:
        data = json.loads(text, parse_float=Decimal)
    except ValueError as exc:
        raise ValueError(f"prices: not valid JSON ({exc})") from None
    except RecursionError:  # the parser recurses once per level: no price table nests that deep
        raise ValueError("prices: nested too deeply to be a price table") from None
    if not isinstance(data, dict):
        raise ValueError("prices: expected a JSON object")
    models = data.get("models", data)
    if not isinstance(models, dict):
        raise ValueError("prices: 'models' must be an object")
    return {name: _price(name, entry) for name, entry in models.items() if not name.startswith("_")}


def _price(name: str, entry: Any) -> ModelPrice:
    if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
        raise ValueError(f"prices: model {name!r} needs 'input' and 'output' (USD per million tokens)")
    values = {field: _usd(name, field, entry[field]) for field in ("input", "output")}
    cached = entry.get("cached_input")
    values["cached_input"] = values["input"] if cached is None else _usd(name, "cached_input", cached)
    return ModelPrice(**values)


def _usd(name: str, field: str, raw: Any) -> Decimal:
    try:
        value = Decimal(str(raw)) if isinstance(raw, (int, str, Decimal)) and not isinstance(raw, bool) else None
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value < 0:
        raise ValueError(f"prices: model {name!r} has an invalid {field} price {raw!r} (USD per million tokens, >= 0)")
    return value


def _packaged_text() -> str:
    return resources.files(__package__).joinpath("prices.json").read_text(encoding="utf-8")


def _override_text(override: str) -> str:
    if override.startswith(("{", "[")):  # JSON text (a list is refused as such, not looked for as a file)
        return override
    path = Path(override)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"prices: cannot read RELAY_PRICES_JSON file {override!r} ({exc.strerror})") from None


def _candidates(model: str) -> list[str]:
    names = [model]
    base = model.rsplit("/", 1)[-1]
    in_region = _BEDROCK_PROFILE.sub("", base)
    for name in (base, in_region, _DATE_SUFFIX.sub("", in_region)):
        for variant in (name, name.lower()):
            if variant not in names:
                names.append(variant)
    return names

"""The price table: generated from the pinned `genai-prices` at build time, shipped as data, and never imported
at run time (its import and first lookup would cost the cold start about 0.7 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from importlib import resources
from pathlib import Path

import genai_prices

from llm_relay.pricing import ModelPrice, PriceTable
from llm_relay_dev import price_table

ROOT = Path(__file__).resolve().parents[2]


def test_the_packaged_table_is_what_the_pinned_library_generates() -> None:
    # GIVEN the committed table and the library pinned in constraints.txt
    committed = resources.files("llm_relay").joinpath("prices.json").read_text(encoding="utf-8")
    pinned = next(line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("genai-"))
    assert pinned == f"genai-prices=={genai_prices.__version__}"
    # WHEN it is generated again THEN nothing changes (after a version bump: `make prices`, and commit the diff)
    assert price_table.render(price_table.generate()) == committed, "run `make prices` and commit prices.json"


def test_every_price_is_the_one_the_library_charges() -> None:
    # GIVEN the relay's table
    table = PriceTable.load()
    raw = json.loads(resources.files("llm_relay").joinpath("prices.json").read_text(encoding="utf-8"))["models"]
    assert len(raw) >= 500
    for name in ("gpt-4o-mini", "claude-3-5-haiku", "gemini-2.0-flash", "mistral-large-latest"):
        # WHEN the library prices a million input and a million output tokens of the model, on the table's date
        usage = genai_prices.Usage(input_tokens=10**6, output_tokens=10**6)
        calc = genai_prices.calc_price(usage, name, genai_request_timestamp=price_table.AS_OF)
        price = table.price_of(name)
        # THEN the relay charges the same
        assert price is not None, name
        assert (price.input, price.output) == (calc.input_price, calc.output_price), name
        assert table.source_of(name) == f"genai-prices {genai_prices.__version__} ({calc.provider.id})"
    assert table.price_of("gpt-4o-mini") == ModelPrice(Decimal("0.15"), Decimal("0.075"), Decimal("0.6"))


def test_a_price_that_varies_by_the_time_of_day_keeps_its_highest_rate() -> None:
    # GIVEN DeepSeek's off-peak discount (the library prices it by the hour of the request)
    table = PriceTable.load()
    usage = genai_prices.Usage(input_tokens=10**6, output_tokens=10**6)
    hourly = [
        genai_prices.calc_price(usage, "deepseek-v4-flash", genai_request_timestamp=at)
        for at in price_table._HALF_HOURS
    ]
    assert len({calc.output_price for calc in hourly}) > 1
    # THEN the relay charges (and reserves) the peak rate at every hour
    price = table.price_of("deepseek-v4-flash")
    assert price is not None
    assert price.output == max(calc.output_price for calc in hourly)
    assert price.input == max(calc.input_price for calc in hourly)


def test_the_function_never_imports_genai_prices() -> None:
    # GIVEN a fresh interpreter WHEN the relay's app, CLI and price table are loaded
    code = (
        "import sys; import llm_relay.app, llm_relay.serve, llm_relay.cli, llm_relay.lambda_handler;"
        "from llm_relay.pricing import PriceTable; PriceTable.load();"
        "print('genai_prices' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    # THEN the library was never imported, and the function's layer does not carry it
    assert out.stdout.strip() == "False"
    assert "genai" not in (ROOT / "layers" / "deps" / "requirements.txt").read_text()


def test_embedding_models_are_priced_by_their_input_tokens() -> None:
    # GIVEN OpenAI's embedding model, which the library prices only when told its provider, with no output price
    usage = genai_prices.Usage(input_tokens=10**6)
    calc = genai_prices.calc_price(usage, "text-embedding-3-small", provider_id="openai")
    # THEN the relay's table has it, at the library's input price and nothing for output
    price = PriceTable.load().price_of("text-embedding-3-small")
    assert price is not None and (price.input, price.output) == (calc.input_price, Decimal(0))

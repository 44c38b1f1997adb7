"""The `llm-relay` CLI as an operator uses it (a subprocess, the installed console script, against moto):
global AWS options and `--version`, plain decimals, one-line errors and never a traceback, a closed pipe,
usage grouped by key/model/day in three formats, key expiry and rotation seen by a running relay."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time
from decimal import Decimal

import httpx
import pytest

from llm_relay import __version__
from llm_relay.dynamo import Stores
from llm_relay.keys import ApiKey, generate_key_id, hash_key
from llm_relay.usage import UsageRecord
from tests.conftest import Relay, RelayFactory
from tests.integration.helpers import chat_body
from tests.integration.test_cli import CLI, cli

BARE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "AWS_"))}


def bare(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no relay or AWS settings in the environment: only what the command line says."""
    return subprocess.run([CLI, *args], env={**BARE_ENV, **env}, capture_output=True, text=True, timeout=60)


def test_version_and_help_name_the_environment() -> None:
    version = bare("--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"llm-relay {__version__}")
    helped = bare("--help")
    assert helped.returncode == 0
    for name in ("--region", "--profile", "--table", "--endpoint-url", "AWS_REGION", "AWS_PROFILE"):
        assert name in helped.stdout
    assert "RELAY_TABLE_NAME" in helped.stdout and "RELAY_DYNAMODB_ENDPOINT" in helped.stdout


def test_global_options_instead_of_the_environment(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN a key in a table, and an environment that names neither the table, the endpoint nor a region
    stores.keys.put(ApiKey(generate_key_id(), "by-options", created_at="2025-01-01T00:00:00Z"), hash_key("lr-o"))
    # WHEN the CLI gets them as options, before or after the command
    before = bare(
        "--region", "us-east-1", "--endpoint-url", moto_endpoint, "--table", stores.table_name, "keys", "list", "--json"
    )
    after = bare(
        "keys", "list", "--json", "--region", "us-east-1", "--endpoint-url", moto_endpoint, "--table", stores.table_name
    )
    # THEN both list the key
    for done in (before, after):
        assert done.returncode == 0, done.stderr
        assert [k["name"] for k in json.loads(done.stdout)] == ["by-options"]
    # AND without a region the answer is one line saying how to give one
    no_region = bare("--endpoint-url", moto_endpoint, "keys", "list")
    assert no_region.returncode == 2 and "no AWS region: give --region" in no_region.stderr
    no_profile = bare("--profile", "nobody-has-this", "--region", "us-east-1", "keys", "list")
    assert no_profile.returncode == 2 and "nobody-has-this" in no_profile.stderr


def test_plain_decimals_in_json_and_tables(stores: Stores, moto_endpoint: str) -> None:
    created = json.loads(cli(stores, moto_endpoint, "keys", "create", "--name", "d", "--json").stdout)
    done = cli(
        stores,
        moto_endpoint,
        "keys",
        "set-limits",
        created["key_id"],
        "--rpm",
        "60",
        "--monthly-budget-usd",
        "1e2",
        "--daily-budget-usd",
        "0.50",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert '"rpm": 60' in done.stdout and "E+" not in done.stdout
    view = json.loads(done.stdout)
    assert view["limits"] == {"rpm": 60, "monthly_budget_usd": 100, "daily_budget_usd": "0.50"}
    assert view["effective_limits"]["rpm"] == 60
    table = cli(stores, moto_endpoint, "keys", "list").stdout
    assert "rpm=60" in table and "monthly_budget_usd=100\n" in table and "E+" not in table


def test_no_input_produces_a_traceback(stores: Stores, moto_endpoint: str) -> None:
    key_id = json.loads(cli(stores, moto_endpoint, "keys", "create", "--name", "k", "--json").stdout)["key_id"]
    cases = {
        ("keys", "create", "--name", "x", "--daily-budget-usd", "1e400"): "must be at most",
        ("keys", "create", "--name", "x", "--daily-budget-usd", "1e-400"): "decimal places",
        ("keys", "create", "--name", "x", "--rpm", "NaN"): "finite",
        ("keys", "create", "--name", "x", "--expires-at", "2025-02-30"): "cannot read expiry",
        ("keys", "create", "--name", "x", "--expires-at", "2001-01-01"): "2001-01-01T00:00:00Z is already past",
        ("keys", "create", "--name", "x", "--models", ","): "at least one model",
        ("keys", "set-limits", key_id, "--expires-at", "tomorrow"): "cannot read expiry",
        ("keys", "revoke", "not-a-key-id"): "is not a key id",
        ("keys", "revoke", "rk_0000unknown"): "no key with id 'rk_0000unknown'",
        ("keys", "rotate", "rk_0000unknown"): "no key with id",
        ("keys", "rotate", key_id, "--grace", "-1"): "minutes must be between",
        ("usage", "--since", "2025-13-01"): "cannot read time",
        ("usage", "--since", "99999999999d"): "cannot read time",
        ("usage", "--since", "1h", "--until", "2h"): "--since must be before --until",
        ("usage", "--by", "colour"): "invalid choice",
        ("usage", "--format", "xml"): "invalid choice",
        ("keys",): "required",
        ("frobnicate",): "invalid choice",
    }
    running = {
        args: subprocess.Popen(
            [CLI, *args],
            env={**os.environ, "RELAY_DYNAMODB_ENDPOINT": moto_endpoint, "RELAY_TABLE_NAME": stores.table_name},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in cases
    }
    for args, process in running.items():
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 2, (args, stderr)
        assert cases[args] in stderr and "Traceback" not in stderr and stdout == "", (args, stderr)
        assert len(stderr.splitlines()) == 1 and stderr.startswith("llm-relay"), (args, stderr)


def test_dynamodb_unreachable_is_one_line(stores: Stores) -> None:
    done = bare("--region", "us-east-1", "--endpoint-url", "http://127.0.0.1:9", "--table", "t", "keys", "list")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "DynamoDB Scan" in done.stderr and "127.0.0.1:9" in done.stderr


def test_a_closed_pipe_ends_quietly(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN more keys than a pipe buffer holds when listed
    for n in range(200):
        stores.keys.put(ApiKey(generate_key_id(), f"key {n}", created_at="2025-01-01T00:00:00Z"), hash_key(f"lr-{n}"))
    env = {**os.environ, "RELAY_DYNAMODB_ENDPOINT": moto_endpoint, "RELAY_TABLE_NAME": stores.table_name}
    # WHEN the reader stops after one line (`| head -1`)
    with subprocess.Popen(
        [CLI, "keys", "list", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().strip() == b"["
        process.stdout.close()
        # THEN the CLI ends without a word
        assert process.wait(timeout=60) == 0
        assert process.stderr.read() == b""


def _seed_usage(stores: Stores) -> tuple[float, float]:
    day1 = time.time() - 86400 - 600
    day2 = time.time() - 600
    records = [
        UsageRecord("rk_a", "req_1", "gpt-4o", day1, "stop", 10, 5, cost_usd=Decimal("0.0001"), upstream="openai"),
        UsageRecord("rk_a", "req_2", "gpt-4o-mini", day2, "stop", 20, 10, cost_usd=Decimal("0.00002")),
        UsageRecord(
            "rk_b",
            "req_3",
            "gpt-4o",
            day2,
            "client_cancelled",
            30,
            7,
            usage_source="estimated",
            cost_usd=Decimal("0.0003"),
            upstream="bedrock-eu",
        ),
        UsageRecord("rk_b", "req_4", "house\n[relay] forged", day2, "stop", 1, 1),
    ]
    for record in records:
        stores.usage.put_refused(record, 90)
    return day1, day2


def test_usage_by_model_key_and_day(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN usage of two keys, three models (one unpriced, its name with a newline), over two days
    day1, day2 = _seed_usage(stores)
    # WHEN usage is grouped by model as JSON
    done = cli(stores, moto_endpoint, "usage", "--since", "3d", "--by", "model", "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    groups = {g["model"]: g for g in body["groups"]}
    # THEN each model has its totals, plain decimals, and the totals cover all
    assert set(groups) == {"gpt-4o", "gpt-4o-mini", "house\n[relay] forged"}
    assert groups["gpt-4o"]["requests"] == 2 and groups["gpt-4o"]["cost_usd"] == "0.0004"
    assert groups["house\n[relay] forged"]["unpriced_requests"] == 1
    assert body["totals"]["requests"] == 4 and "records" not in body
    # AND as a table: one line per model, control characters escaped
    table = cli(stores, moto_endpoint, "usage", "--since", "3d", "--by", "model").stdout
    assert "house\\n[relay] forged" in table and "\n[relay]" not in table
    # AND by key as CSV, by day as a table
    rows = list(
        csv.DictReader(
            io.StringIO(cli(stores, moto_endpoint, "usage", "--since", "3d", "--by", "key", "--format", "csv").stdout)
        )
    )
    assert [(r["KEY"], r["REQUESTS"], r["COST USD"]) for r in rows] == [
        ("rk_a", "2", "0.00012"),
        ("rk_b", "2", "0.0003"),
    ]
    days = cli(stores, moto_endpoint, "usage", "--since", "3d", "--by", "day", "--format", "csv").stdout
    expected = {time.strftime("%Y-%m-%d", time.gmtime(day1)): "1", time.strftime("%Y-%m-%d", time.gmtime(day2)): "3"}
    assert {r["DAY"]: r["REQUESTS"] for r in csv.DictReader(io.StringIO(days))} == expected
    # AND one key's records as CSV
    one = cli(stores, moto_endpoint, "usage", "--since", "3d", "--key", "rk_a", "--format", "csv").stdout
    assert [r["REQUEST ID"] for r in csv.DictReader(io.StringIO(one))] == ["req_1", "req_2"]


def test_usage_csv_has_numbers_in_numeric_columns(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN usage records, one with estimated tokens and one of an unpriced model
    _seed_usage(stores)
    # WHEN they are printed as CSV
    done = cli(stores, moto_endpoint, "usage", "--since", "3d", "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = {row["REQUEST ID"]: row for row in csv.DictReader(io.StringIO(done.stdout))}
    # THEN every numeric cell is a number or empty (nothing known), and how tokens were counted has its own column
    for row in rows.values():
        for column in ("PROMPT", "COMPLETION", "COST USD", "TTFT MS", "DURATION MS"):
            assert row[column] == "" or Decimal(row[column]).is_finite(), (column, row)
    assert (rows["req_3"]["PROMPT"], rows["req_3"]["COMPLETION"], rows["req_3"]["USAGE SOURCE"]) == (
        "30",
        "7",
        "estimated",
    )
    assert rows["req_1"]["USAGE SOURCE"] == "upstream" and rows["req_4"]["COST USD"] == ""
    # AND the table for a person still marks the estimate beside the number
    table = cli(stores, moto_endpoint, "usage", "--since", "3d").stdout
    assert "30 (est)" in table


@pytest.fixture
def instant_relay(make_relay: RelayFactory) -> Relay:
    return make_relay(auth_cache_ttl_s=0.0)


def _status(relay: Relay, key: str) -> tuple[int, str | None]:
    body = chat_body(mock={"tokens": 1, "chunk_delay_ms": 0, "ttft_ms": 0})
    response = httpx.post(f"{relay.url}/v1/chat/completions", json=body, headers=relay.headers(key), timeout=10)
    return response.status_code, response.json().get("error", {}).get("code") if response.status_code != 200 else None


def test_an_expired_key_is_refused(instant_relay: Relay, moto_endpoint: str) -> None:
    relay = instant_relay
    # GIVEN a key that expires in a day
    later = json.loads(
        cli(relay.stores, moto_endpoint, "keys", "create", "--name", "later", "--expires-at", "+1d", "--json").stdout
    )
    assert _status(relay, later["key"]) == (200, None)
    # WHEN its expiry is moved into the past
    moved = cli(
        relay.stores, moto_endpoint, "keys", "set-limits", later["key_id"], "--expires-at", "2020-06-01", "--json"
    )
    # THEN the change is made, with a warning on stderr (the JSON on stdout stays whole), and the key is refused
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["status"] == "expired"
    assert moved.stderr.startswith("llm-relay: warning: ") and "2020-06-01T00:00:00Z, already past" in moved.stderr
    assert _status(relay, later["key"]) == (401, "invalid_api_key")
    # AND `never` brings it back, without a warning
    back = cli(relay.stores, moto_endpoint, "keys", "set-limits", later["key_id"], "--expires-at", "never")
    assert back.returncode == 0 and back.stderr == ""
    assert _status(relay, later["key"]) == (200, None)


def test_a_key_is_not_created_already_expired(stores: Stores, moto_endpoint: str) -> None:
    # WHEN a key is created with an expiry that has passed
    done = cli(stores, moto_endpoint, "keys", "create", "--name", "past", "--expires-at", "2001-01-01", "--json")
    # THEN it is refused in one line, before anything is written: no secret printed, no key stored
    assert done.returncode == 2 and done.stdout == "" and "already past" in done.stderr
    assert list(stores.keys.list_all()) == []


def test_rotation_keeps_the_old_secret_for_the_grace_period(instant_relay: Relay, moto_endpoint: str) -> None:
    relay = instant_relay
    created = json.loads(cli(relay.stores, moto_endpoint, "keys", "create", "--name", "r", "--json").stdout)
    # WHEN it is rotated with a grace period: both secrets work
    rotated = json.loads(
        cli(relay.stores, moto_endpoint, "keys", "rotate", created["key_id"], "--grace", "10", "--json").stdout
    )
    assert rotated["key"] != created["key"] and rotated["key_id"] == created["key_id"]
    assert _status(relay, created["key"]) == (200, None) and _status(relay, rotated["key"]) == (200, None)
    # AND a revocation reaches both
    assert cli(relay.stores, moto_endpoint, "keys", "revoke", created["key_id"]).returncode == 0
    assert _status(relay, created["key"]) == (401, "invalid_api_key")
    assert _status(relay, rotated["key"]) == (401, "invalid_api_key")


def test_rotation_without_grace_refuses_the_old_secret_at_once(instant_relay: Relay, moto_endpoint: str) -> None:
    relay = instant_relay
    created = json.loads(cli(relay.stores, moto_endpoint, "keys", "create", "--name", "r", "--json").stdout)
    rotated = json.loads(
        cli(relay.stores, moto_endpoint, "keys", "rotate", created["key_id"], "--grace", "0", "--json").stdout
    )
    assert _status(relay, created["key"]) == (401, "invalid_api_key")
    assert _status(relay, rotated["key"]) == (200, None)


def test_a_second_rotation_ends_the_first_secrets_grace(instant_relay: Relay, moto_endpoint: str) -> None:
    relay = instant_relay
    created = json.loads(cli(relay.stores, moto_endpoint, "keys", "create", "--name", "r", "--json").stdout)
    rotate = ("keys", "rotate", created["key_id"], "--grace", "10", "--json")
    second = json.loads(cli(relay.stores, moto_endpoint, *rotate).stdout)
    third = json.loads(cli(relay.stores, moto_endpoint, *rotate).stdout)
    # THEN the first secret is refused, the second in its grace period, the third current
    assert _status(relay, created["key"]) == (401, "invalid_api_key")
    assert _status(relay, second["key"]) == (200, None) and _status(relay, third["key"]) == (200, None)


def test_usage_by_upstream(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN usage answered by two upstreams, and records that name none
    _seed_usage(stores)
    # WHEN usage is grouped by upstream
    done = cli(stores, moto_endpoint, "usage", "--since", "3d", "--by", "upstream", "--json")
    assert done.returncode == 0, done.stderr
    groups = {g["upstream"]: g["requests"] for g in json.loads(done.stdout)["groups"]}
    # THEN each upstream has its requests, and records without one are under "-"
    assert groups == {"openai": 1, "bedrock-eu": 1, "-": 2}

"""The `llm-relay` CLI as a subprocess (the installed console script) against the moto server: key
management, bad input refused with nothing written, and a revocation a running relay honours within its auth
cache TTL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal

import httpx

from llm_relay.dynamo import Stores
from tests.conftest import RelayFactory
from tests.integration.helpers import chat_body
from tests.waiting import wait_until

CLI = os.path.join(os.path.dirname(sys.executable), "llm-relay")


def _env(stores: Stores, moto_endpoint: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "RELAY_DYNAMODB_ENDPOINT": moto_endpoint, "RELAY_TABLE_NAME": stores.table_name, **extra}


def cli(stores: Stores, moto_endpoint: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=_env(stores, moto_endpoint, **env), capture_output=True, text=True, timeout=30
    )


def test_create_list_set_limits_and_revoke(stores: Stores, moto_endpoint: str) -> None:
    # WHEN a key is created with limits and a model allow-list
    created = cli(
        stores,
        moto_endpoint,
        "keys",
        "create",
        "--name",
        "team a",
        "--rpm",
        "5",
        "--max-concurrent",
        "2",
        "--daily-budget-usd",
        "1.50",
        "--models",
        "gpt-4o-mini,gpt-4o",
        "--json",
        RELAY_DEFAULT_TPM="1000",
    )
    assert created.returncode == 0, created.stderr
    view = json.loads(created.stdout)
    plain, key_id = view["key"], view["key_id"]
    # THEN the plain key is printed once; the record holds only its hash, the limits and the models
    assert plain.startswith("lr-") and key_id.startswith("rk_")
    key, _ = stores.keys.get_by_id(key_id)  # type: ignore[misc]
    assert key.limits == {"rpm": Decimal(5), "max_concurrent": Decimal(2), "daily_budget_usd": Decimal("1.50")}
    assert key.allowed_models == frozenset({"gpt-4o-mini", "gpt-4o"}) and key.name == "team a"
    assert view["effective_limits"]["tpm"] == 1000  # the configured default fills the gap
    # AND listing shows the key, never the plain key
    listed = cli(stores, moto_endpoint, "keys", "list")
    assert listed.returncode == 0 and key_id in listed.stdout and plain not in listed.stdout
    assert "rpm=5" in listed.stdout and "daily_budget_usd=1.50" in listed.stdout
    # WHEN its limits change: one lifted, one back to the default, one new
    changed = cli(
        stores,
        moto_endpoint,
        "keys",
        "set-limits",
        key_id,
        "--rpm",
        "unlimited",
        "--max-concurrent",
        "default",
        "--tpm",
        "20000",
    )
    assert changed.returncode == 0, changed.stderr
    key, _ = stores.keys.get_by_id(key_id)  # type: ignore[misc]
    assert key.limits == {"rpm": Decimal(-1), "tpm": Decimal(20000), "daily_budget_usd": Decimal("1.50")}
    # WHEN it is revoked
    revoked = cli(stores, moto_endpoint, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and "within 30 s" in revoked.stdout
    assert stores.keys.get_by_id(key_id)[0].status == "revoked"  # type: ignore[index]
    listed = json.loads(cli(stores, moto_endpoint, "keys", "list", "--json").stdout)
    assert [(k["key_id"], k["status"]) for k in listed] == [(key_id, "revoked")]


def test_bad_input_is_refused_with_a_clear_error_and_nothing_written(stores: Stores, moto_endpoint: str) -> None:
    cases = {
        ("keys", "create", "--name", "x", "--rpm", "-5"): (2, "rpm must not be negative"),
        ("keys", "create", "--name", "x", "--tpm", "lots"): (2, "tpm must be a number"),
        ("keys", "create", "--name", "x", "--daily-budget-usd", "-1"): (2, "must not be negative"),
        ("keys", "create", "--name", "x", "--max-concurrent", "1.5"): (2, "whole number"),
        ("keys", "create", "--name", "   "): (2, "the name must not be empty"),
        ("keys", "create", "--name", ""): (2, "the name must not be empty"),
        ("keys", "revoke", "rk_doesnotexist"): (2, "no key with id 'rk_doesnotexist'"),
        ("keys", "set-limits", "rk_doesnotexist", "--rpm", "5"): (2, "no key with id"),
        ("keys", "set-limits", "rk_doesnotexist"): (2, "nothing to set"),
        ("usage", "--since", "yesterday-ish"): (2, "cannot read time"),
    }
    # WHEN each bad command runs (in parallel: they are independent)
    running = {
        args: subprocess.Popen(
            [CLI, *args], env=_env(stores, moto_endpoint), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in cases
    }
    for args, process in running.items():
        stdout, stderr = process.communicate(timeout=30)
        code, message = cases[args]
        # THEN a non-zero exit code and the reason on stderr
        assert (process.returncode, message in stderr) == (code, True), (args, stderr)
        assert stdout == ""
    # AND nothing was written
    assert stores.keys.list_all() == []
    scan = stores.client.scan(TableName=stores.table_name, Select="COUNT")
    assert scan["Count"] == 0


def test_a_revoked_key_is_refused_within_the_auth_cache_ttl(make_relay: RelayFactory, moto_endpoint: str) -> None:
    # GIVEN a relay caching key lookups for 1 s, and a key created with the CLI that it has already seen
    relay = make_relay(auth_cache_ttl_s=1.0)
    created = json.loads(cli(relay.stores, moto_endpoint, "keys", "create", "--name", "soon-gone", "--json").stdout)
    url = f"{relay.url}/v1/chat/completions"
    body = chat_body(mock={"tokens": 2, "chunk_delay_ms": 0, "ttft_ms": 0})
    with httpx.Client(timeout=10) as client:
        assert client.post(url, json=body, headers=relay.headers(created["key"])).status_code == 200
        # WHEN it is revoked
        assert cli(relay.stores, moto_endpoint, "keys", "revoke", created["key_id"]).returncode == 0
        revoked_at = time.monotonic()
        # THEN the relay refuses it once the cache TTL has passed (the TTL to the tick: tests/unit/test_auth.py,
        # with a fake clock; here a loaded machine's slack on top)
        wait_until(
            lambda: client.post(url, json=body, headers=relay.headers(created["key"])).status_code != 200,
            "revocation effective",
            interval=0.05,
        )
        assert time.monotonic() - revoked_at < relay.settings.auth_cache_ttl_s + 5.0
        response = client.post(url, json=body, headers=relay.headers(created["key"]))
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_prices_shows_what_the_relay_charges_and_where_it_comes_from(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN an override for one model
    override = '{"my-llama": {"input": "0.20", "output": "0.40"}}'
    # WHEN the prices of a packaged model, a dated name, the overridden one and an unknown one are asked for
    packaged = cli(stores, moto_endpoint, "prices", "gpt-4o-mini", "--json")
    dated = cli(stores, moto_endpoint, "prices", "claude-3-5-haiku-20241022")
    overridden = cli(stores, moto_endpoint, "prices", "my-llama", "--json", RELAY_PRICES_JSON=override)
    unknown = cli(stores, moto_endpoint, "prices", "no-such-model")
    # THEN per-million prices with their source: the pinned package (and provider), or the override
    assert json.loads(packaged.stdout) == [
        {
            "model": "gpt-4o-mini",
            "input": "0.15",
            "cached_input": "0.075",
            "output": "0.6",
            "source": json.loads(packaged.stdout)[0]["source"],
        }
    ]
    assert json.loads(packaged.stdout)[0]["source"].startswith("genai-prices 0.2.3 (openai)")
    assert "claude-3-5-haiku" in dated.stdout and "(anthropic)" in dated.stdout
    assert json.loads(overridden.stdout)[0]["source"] == "RELAY_PRICES_JSON"
    # AND an unknown model says so, and how to add a price
    assert unknown.returncode == 2 and "RELAY_PRICES_JSON" in unknown.stderr


def test_autoshard_raises_the_shards_of_a_key_whose_measured_rate_asks_for_them(
    stores: Stores, moto_endpoint: str
) -> None:
    from llm_relay.dynamo import layout
    from llm_relay.keys import ApiKey, generate_key_id, hash_key
    from llm_relay.limits.rules import Window, shards_for

    # GIVEN two rated keys: one that admitted 3,000 requests in a minute of the last five (50 a second), one 60
    hot = ApiKey(key_id=generate_key_id(), name="hot", limits={"rpm": Decimal(10**6)})
    calm = ApiKey(key_id=generate_key_id(), name="calm", limits={"rpm": Decimal(10**6)})
    minute = Window.at(time.time()).minute - 2
    for key, count in ((hot, 3000), (calm, 60)):
        stores.keys.put(key, hash_key(f"secret-{key.key_id}"))
        item = {"pk": layout.partition(key.key_id), "sk": layout.rate_sk(minute), "requests": count, "tokens": 0}
        stores.client.put_item(TableName=stores.table_name, Item=layout.serialize(item))
    # WHEN an operator asks which need shards
    report = cli(stores, moto_endpoint, "keys", "autoshard", "--json")
    assert report.returncode == 0, report.stderr
    rows = {row["key_id"]: row for row in json.loads(report.stdout)}
    # THEN the hot key's rate asks for more, the calm one's not; nothing changes until --apply
    assert rows[hot.key_id]["peak_requests_per_s"] == 50.0 and rows[hot.key_id]["needed"] == shards_for(50) > 1
    assert rows[calm.key_id]["needed"] == 1 and rows[calm.key_id]["action"] == "none"
    assert "shards" not in (stores.keys.get_by_id(hot.key_id) or (hot, ""))[0].limits
    applied = cli(stores, moto_endpoint, "keys", "autoshard", "--apply")
    assert applied.returncode == 0 and "raised" in applied.stdout, applied.stdout + applied.stderr
    found = stores.keys.get_by_id(hot.key_id)
    assert found is not None and found[0].limits["shards"] == shards_for(50)

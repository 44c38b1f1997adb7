"""The `llm-relay` CLI and the compliance gate (a subprocess, the installed console script, against moto): a key's own
sanitizer policy set, shown beside the one in force (the deployment's a floor), changed and cleared; bad modes and
entity types refused with nothing written; the redactions of usage records in every format."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time
from decimal import Decimal

from llm_relay.dynamo import Stores
from llm_relay.sanitize.policy import KeyPolicy
from llm_relay.usage import UsageRecord
from tests.integration.test_cli import CLI, cli

ALL_OFF = {"output": {"mode": "off", "entities": []}, "prompt": {"mode": "off", "entities": []}}


def _key_id(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    key_id: str = json.loads(done.stdout)["key_id"]
    return key_id


def test_a_keys_own_policy_is_shown_beside_the_one_in_force(stores: Stores, moto_endpoint: str) -> None:
    # WHEN a key is created with its own policy, under a deployment with the sanitizer off
    created = cli(
        stores,
        moto_endpoint,
        "keys",
        "create",
        "--name",
        "careful",
        "--sanitize",
        "redact",
        "--sanitize-prompt",
        "block",
        "--sanitize-entities",
        "email, credit_card",
    )
    assert created.returncode == 0, created.stderr
    # THEN creation prints the policy in force, and the record holds the key's own
    assert "sanitize output redact (CREDIT_CARD,EMAIL), prompt block (CREDIT_CARD,EMAIL)" in created.stdout
    key_id = created.stdout.split()[2]
    key, _ = stores.keys.get_by_id(key_id)  # type: ignore[misc]
    assert key.sanitize == KeyPolicy("redact", "block", frozenset({"EMAIL", "CREDIT_CARD"}))
    # AND `show` reports both, as JSON and as text
    view = json.loads(cli(stores, moto_endpoint, "keys", "show", key_id, "--json").stdout)
    assert view["sanitize"] == {"output": "redact", "prompt": "block", "entities": ["CREDIT_CARD", "EMAIL"]}
    assert view["effective_sanitize"] == {
        "output": {"mode": "redact", "entities": ["CREDIT_CARD", "EMAIL"]},
        "prompt": {"mode": "block", "entities": ["CREDIT_CARD", "EMAIL"]},
    }
    assert (view["name"], view["status"], view["allowed_models"]) == ("careful", "active", None)
    text = cli(stores, moto_endpoint, "keys", "show", key_id).stdout
    assert f"key {key_id} (careful)" in text and "status    active" in text and "models    all" in text
    assert "own: output redact, prompt block, entities CREDIT_CARD,EMAIL" in text
    assert "in force: output redact (CREDIT_CARD,EMAIL), prompt block (CREDIT_CARD,EMAIL)" in text
    # AND the list has a column for the policy in force
    assert "out=redact prompt=block" in cli(stores, moto_endpoint, "keys", "list").stdout


def test_the_deployments_policy_is_a_floor_the_key_cannot_lower(stores: Stores, moto_endpoint: str) -> None:
    floor = {"RELAY_SANITIZE": "redact"}
    # GIVEN a key that asks for no output sanitizer, and one with no policy of its own
    asked_off = _key_id(cli(stores, moto_endpoint, "keys", "create", "--name", "lax", "--sanitize", "off", "--json"))
    plain = _key_id(cli(stores, moto_endpoint, "keys", "create", "--name", "plain", "--json"))
    # WHEN they are shown under a deployment that redacts the output
    view = json.loads(cli(stores, moto_endpoint, "keys", "show", asked_off, "--json", **floor).stdout)
    # THEN the key's own `off` stands on its record, and the deployment's redact (every type) is in force
    assert view["sanitize"] == {"output": "off", "prompt": None, "entities": None}
    assert view["effective_sanitize"]["output"] == {"mode": "redact", "entities": "all"}
    assert view["effective_sanitize"]["prompt"] == {"mode": "off", "entities": []}
    text = cli(stores, moto_endpoint, "keys", "show", asked_off, **floor).stdout
    assert "own: output off, prompt default, entities default" in text
    assert "in force: output redact (all), prompt off" in text
    # AND a key with no policy of its own has the deployment's
    plain_view = json.loads(cli(stores, moto_endpoint, "keys", "show", plain, "--json", **floor).stdout)
    assert plain_view["sanitize"] is None and plain_view["effective_sanitize"]["output"]["mode"] == "redact"
    assert "own: default (the deployment's)" in cli(stores, moto_endpoint, "keys", "show", plain, **floor).stdout
    # AND without the floor both are off
    listed = json.loads(cli(stores, moto_endpoint, "keys", "list", "--json").stdout)
    assert [k["effective_sanitize"] for k in listed] == [ALL_OFF, ALL_OFF]
    table = cli(stores, moto_endpoint, "keys", "list", **floor).stdout.splitlines()
    assert "SANITIZE" in table[0] and all("out=redact prompt=off" in row for row in table[1:])


def test_update_changes_the_policy_and_default_clears_it(stores: Stores, moto_endpoint: str) -> None:
    key_id = _key_id(cli(stores, moto_endpoint, "keys", "create", "--name", "u", "--rpm", "5", "--json"))
    # WHEN the prompt side, the entity types and a limit change in one update
    done = cli(
        stores,
        moto_endpoint,
        "keys",
        "update",
        key_id,
        "--sanitize-prompt",
        "redact",
        "--sanitize-entities",
        "IBAN",
        "--tpm",
        "100",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    # THEN all are stored, and what was not named stays
    assert view["sanitize"] == {"output": None, "prompt": "redact", "entities": ["IBAN"]}
    assert view["effective_sanitize"]["prompt"] == {"mode": "redact", "entities": ["IBAN"]}
    assert view["limits"] == {"rpm": 5, "tpm": 100}
    # WHEN one field goes back to the deployment's, then the output side is set and the expiry with it
    assert cli(stores, moto_endpoint, "keys", "update", key_id, "--sanitize-entities", "default").returncode == 0
    key, _ = stores.keys.get_by_id(key_id)  # type: ignore[misc]
    assert key.sanitize == KeyPolicy(prompt="redact")
    text = cli(stores, moto_endpoint, "keys", "update", key_id, "--sanitize", "block", "--expires-at", "2099-01-01")
    assert text.returncode == 0, text.stderr
    assert f"updated key {key_id}" in text.stdout and "in force: output block (all), prompt redact (all)" in text.stdout
    # WHEN every field is `default`: the key has no policy of its own left
    cleared = cli(
        stores, moto_endpoint, "keys", "update", key_id, "--sanitize", "default", "--sanitize-prompt", "default"
    )
    assert cleared.returncode == 0, cleared.stderr
    key, _ = stores.keys.get_by_id(key_id)  # type: ignore[misc]
    assert key.sanitize is None and key.expires_at == "2099-01-01T00:00:00Z"
    assert key.limits == {"rpm": Decimal(5), "tpm": Decimal(100)}
    # AND set-limits still sets limits (and takes no sanitizer option)
    assert cli(stores, moto_endpoint, "keys", "set-limits", key_id, "--rpm", "default").returncode == 0
    assert stores.keys.get_by_id(key_id)[0].limits == {"tpm": Decimal(100)}  # type: ignore[index]
    refused = cli(stores, moto_endpoint, "keys", "set-limits", key_id, "--sanitize", "redact")
    assert refused.returncode == 2 and "unrecognized arguments: --sanitize" in refused.stderr


def test_bad_sanitizer_input_is_one_line_and_writes_nothing(stores: Stores, moto_endpoint: str) -> None:
    key_id = "rk_0000unknown"
    cases = {
        ("keys", "create", "--name", "x", "--sanitize", "mask"): "mode must be off, redact, block or default",
        ("keys", "create", "--name", "x", "--sanitize-prompt", ""): "not ''",
        ("keys", "create", "--name", "x", "--sanitize-entities", "EMAIL,SSN"): "unknown entity type(s) SSN; known: ",
        ("keys", "create", "--name", "x", "--sanitize-entities", ","): "give entity types (PRIVATE_KEY,",
        ("keys", "update", key_id, "--sanitize", "strict"): "argument --sanitize: the sanitizer mode must be",
        ("keys", "update", key_id, "--sanitize", "redact"): "no key with id 'rk_0000unknown'",
        ("keys", "update", key_id): "nothing to update: give at least one of --rpm,",
        ("keys", "show", key_id): "no key with id 'rk_0000unknown'",
    }
    env = {**os.environ, "RELAY_DYNAMODB_ENDPOINT": moto_endpoint, "RELAY_TABLE_NAME": stores.table_name}
    running = {
        args: subprocess.Popen([CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in cases
    }
    for args, process in running.items():
        stdout, stderr = process.communicate(timeout=60)
        # THEN exit code 2, one line naming the reason, no output
        assert process.returncode == 2 and cases[args] in stderr and stdout == "", (args, stderr)
        assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, (args, stderr)
    # AND the known entity types are listed, and every option named where nothing was given
    nothing = cli(stores, moto_endpoint, "keys", "update", key_id).stderr
    assert "--expires-at, --sanitize, --sanitize-prompt, --sanitize-entities" in nothing
    unknown = cli(stores, moto_endpoint, "keys", "create", "--name", "x", "--sanitize-entities", "EMAIL,SSN").stderr
    assert "PRIVATE_KEY" in unknown and "PHONE_NUMBER" in unknown
    # AND nothing was written
    assert stores.client.scan(TableName=stores.table_name, Select="COUNT")["Count"] == 0


def _seed_redactions(stores: Stores) -> None:
    now = time.time() - 600
    records = [
        UsageRecord(
            "rk_a",
            "req_1",
            "gpt-4o",
            now,
            "stop",
            10,
            5,
            cost_usd=Decimal("0.0001"),
            redactions={"PHONE_NUMBER": 1, "EMAIL": 2},
            prompt_redactions={"EMAIL": 1},
            policy_version=1,
        ),
        UsageRecord("rk_a", "req_2", "gpt-4o", now + 1, "stop", 10, 5, cost_usd=Decimal("0.0001")),
        UsageRecord("rk_b", "req_3", "gpt-4o", now + 2, "content_filter", 3, 1, prompt_redactions={"IBAN": 1}),
    ]
    for record in records:
        stores.usage.put_refused(record, 90)


def test_usage_shows_what_the_sanitizer_caught(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN records with output and prompt redactions, and one without
    _seed_redactions(stores)
    # WHEN usage is read as a table
    table = cli(stores, moto_endpoint, "usage", "--since", "1h").stdout
    lines = table.splitlines()
    # THEN each record has its redactions (prompt ones marked), `-` for none, and the totals sum them by type
    column = lines[1].index("REDACTIONS")
    cells = {line.split()[2]: line[column:] for line in lines[2:5]}
    assert cells == {"req_1": "EMAIL=2 PHONE_NUMBER=1 prompt:EMAIL=1", "req_2": "-", "req_3": "prompt:IBAN=1"}
    assert "redactions: EMAIL=3 IBAN=1 PHONE_NUMBER=1" in lines
    # AND as CSV, in the same form
    rows = list(
        csv.DictReader(io.StringIO(cli(stores, moto_endpoint, "usage", "--since", "1h", "--format", "csv").stdout))
    )
    assert [r["REDACTIONS"] for r in rows] == ["EMAIL=2 PHONE_NUMBER=1 prompt:EMAIL=1", "-", "prompt:IBAN=1"]
    # AND grouped by key, each group sums its own
    by_key = cli(stores, moto_endpoint, "usage", "--since", "1h", "--by", "key", "--format", "csv").stdout
    assert {r["KEY"]: r["REDACTIONS"] for r in csv.DictReader(io.StringIO(by_key))} == {
        "rk_a": "EMAIL=3 PHONE_NUMBER=1",
        "rk_b": "IBAN=1",
    }
    # AND as JSON, the records' fields and the totals by type
    body = json.loads(cli(stores, moto_endpoint, "usage", "--since", "1h", "--json").stdout)
    first = body["records"][0]
    assert (first["redactions"], first["prompt_redactions"]) == ({"EMAIL": 2, "PHONE_NUMBER": 1}, {"EMAIL": 1})
    assert first["policy_version"] == 1 and body["records"][1]["redactions"] == {}
    assert body["totals"]["redactions"] == {"EMAIL": 3, "IBAN": 1, "PHONE_NUMBER": 1}

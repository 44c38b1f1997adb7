"""Spend attribution end to end: a real relay on loopback against moto and the mock upstream stores each request's
end user and tags (`user`, `metadata`, `X-Relay-Tags`) on its usage record, refused requests included, and refuses
malformed ones before anything is admitted; `llm-relay usage --by user` and `--by tag:<name>` split the spend; and
`make dev`'s relay never puts them in a metric or its per-request log line."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from decimal import Decimal
from typing import Any

import httpx

from llm_relay.attribution import Attribution
from llm_relay.dynamo import Stores
from llm_relay.metering import Usage
from llm_relay.pricing import PriceTable
from llm_relay.usage import UsageRecord
from tests.conftest import Relay, RelayFactory, Upstream
from tests.integration.devserver_support import dev_server
from tests.integration.helpers import chat_body, sse_events
from tests.integration.test_cli import cli
from tests.integration.test_limits_relay import in_one_minute_window, new_key, records_of

SHORT = {"tokens": 3, "chunk_delay_ms": 0, "ttft_ms": 0}


def _post(url: str, key: str, body: dict[str, Any], tags: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    if tags is not None:
        headers["x-relay-tags"] = tags
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_each_record_carries_its_user_and_tags(relay: Relay, upstream: Upstream) -> None:
    # GIVEN requests naming their end user and tags in the body, the header, both, or neither (streamed or not)
    sent = [
        (chat_body(user="alice", metadata={"team": "search"}, mock=SHORT), None),
        (chat_body(user="alice", stream=True, mock=SHORT), "team=ads, feature=autocomplete"),
        (chat_body(user="bob", metadata={"team": "ads", "env": "prod"}, mock=SHORT), "team=search"),
        (chat_body(user="", mock=SHORT), None),
    ]
    ids = []
    for body, tags in sent:
        response = _post(relay.url, relay.key, body, tags)
        assert response.status_code == 200, response.text
        ids.append(response.headers["x-request-id"])
    # WHEN their usage records are read back
    records = {r.request_id: r for r in records_of(relay.stores, relay.api_key.key_id, len(sent))}
    # THEN each carries what its request named, the header winning over the body per tag
    assert [records[i].attribution for i in ids] == [
        Attribution("alice", {"team": "search"}),
        Attribution("alice", {"feature": "autocomplete", "team": "ads"}),
        Attribution("bob", {"env": "prod", "team": "search"}),
        Attribution(None, {}),
    ]
    # AND the request's ledger item holds them too, for a reconciler that would have to settle it as `lost`
    item = relay.stores.requests.get(ids[2]) or {}
    assert (item.get("user"), item.get("tags")) == ("bob", {"env": "prod", "team": "search"})
    assert "user" not in (relay.stores.requests.get(ids[3]) or {"user": "?"})
    # AND the upstream got the user, but neither the metadata nor the header
    assert [b.get("user") for b in upstream.state.bodies] == ["alice", "alice", "bob", ""]
    assert not any("metadata" in b for b in upstream.state.bodies)
    assert not any("x-relay-tags" in h for h in upstream.state.headers)


def test_malformed_attribution_is_a_400_before_admission(relay: Relay, upstream: Upstream) -> None:
    cases = [
        (chat_body(metadata={"team": 7}), None, "metadata.team"),
        (chat_body(metadata={f"k{i}": "v" for i in range(17)}, stream=True), None, "metadata"),
        (chat_body(user=42), None, "user"),
        (chat_body(stream=True), "team", "x-relay-tags"),
        (chat_body(), "team=a, team=b", "x-relay-tags"),
    ]
    for body, tags, param in cases:
        # WHEN a request breaks a bound
        response = _post(relay.url, relay.key, body, tags)
        # THEN it is a 400 naming the field, nothing went upstream and nothing was recorded
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert upstream.state.bodies == []
    assert relay.stores.usage.for_key(relay.api_key.key_id, 0, 2e10) == []


def test_a_request_refused_by_a_limit_is_attributed_too(make_relay: RelayFactory, stores: Stores) -> None:
    # GIVEN a key allowed one request a minute
    relay = make_relay()
    plain, key = new_key(stores, rpm=1)
    body = chat_body(user="carol", mock=SHORT)
    # WHEN a tagged request is admitted and a second one refused within the minute
    first, second = in_one_minute_window(
        lambda: (_post(relay.url, plain, body, "team=search"), _post(relay.url, plain, body, "team=search"))
    )
    assert (first.status_code, second.status_code) == (200, 429)
    # THEN the refusal's record names the same user and tags
    refused = [r for r in records_of(stores, key.key_id, 2) if r.termination_reason == "rate_limit_exceeded"]
    assert [r.attribution for r in refused] == [Attribution("carol", {"team": "search"})]


def _seed(stores: Stores) -> None:
    spend = [
        ("req_1", "alice", {"team": "search"}, "0.01"),
        ("req_2", "alice", {"team": "ads", "feature": "chat"}, "0.02"),
        ("req_3", "bob", {"team": "search"}, "0.04"),
        ("req_4", None, {}, "0.08"),
        ("req_5", "eve\n[relay] forged", {"team": "x\ty"}, "0.16"),
    ]
    for request_id, user, tags, cost in spend:
        record = UsageRecord("rk_a", request_id, "gpt-4o-mini", 1.7e9, "stop", 10, 5, cost_usd=Decimal(cost))
        stores.usage.put_refused(dataclasses.replace(record, attribution=Attribution(user, tags)), 90)


def test_usage_by_user_and_by_tag(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN five records: two users, one without a user, one whose user and tag hold control characters
    _seed(stores)
    since = ("--since", "2023-11-01", "--until", "2023-11-30")
    # WHEN usage is grouped by user as JSON
    done = cli(stores, moto_endpoint, "usage", *since, "--by", "user", "--json")
    assert done.returncode == 0, done.stderr
    groups = {g["user"]: (g["requests"], g["cost_usd"], g["total_tokens"]) for g in json.loads(done.stdout)["groups"]}
    # THEN each user has its requests, tokens and cost; no user is "-"
    assert groups == {
        "-": (1, "0.08", 15),
        "alice": (2, "0.03", 30),
        "bob": (1, "0.04", 15),
        "eve\n[relay] forged": (1, "0.16", 15),
    }
    # AND by one tag as CSV: the same columns as every other grouping, "-" for records without the tag
    by_team = cli(stores, moto_endpoint, "usage", *since, "--by", "tag:team", "--format", "csv").stdout
    by_model = cli(stores, moto_endpoint, "usage", *since, "--by", "model", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(by_team)))
    assert by_team.splitlines()[0].split(",")[1:] == by_model.splitlines()[0].split(",")[1:]
    assert [(r["TAG:team"], r["REQUESTS"], r["COST USD"]) for r in rows] == [
        ("-", "1", "0.08"),
        ("ads", "1", "0.02"),
        ("search", "2", "0.05"),
        ("x\\ty", "1", "0.16"),
    ]
    # AND as a table, control characters escaped; a tag no record has is all "-"
    table = cli(stores, moto_endpoint, "usage", *since, "--by", "user").stdout
    assert "eve\\n[relay] forged" in table and "\n[relay]" not in table
    nobody = json.loads(cli(stores, moto_endpoint, "usage", *since, "--by", "tag:env", "--json").stdout)
    assert [(g["tag:env"], g["requests"]) for g in nobody["groups"]] == [("-", 5)]


def test_every_request_shows_its_user_and_tags(stores: Stores, moto_endpoint: str) -> None:
    _seed(stores)
    since = ("--since", "2023-11-01", "--until", "2023-11-30")
    records = json.loads(cli(stores, moto_endpoint, "usage", *since, "--json").stdout)["records"]
    assert {r["request_id"]: (r["user"], r["tags"]) for r in records}["req_2"] == (
        "alice",
        {"feature": "chat", "team": "ads"},
    )
    rows = {
        r["REQUEST ID"]: r
        for r in csv.DictReader(io.StringIO(cli(stores, moto_endpoint, "usage", *since, "--format", "csv").stdout))
    }
    assert (rows["req_2"]["USER"], rows["req_2"]["TAGS"]) == ("alice", "feature=chat team=ads")
    assert (rows["req_4"]["USER"], rows["req_4"]["TAGS"]) == ("-", "-")
    # AND a --by the CLI does not know is one line, exit 2
    for bad in ("colour", "tag:"):
        wrong = cli(stores, moto_endpoint, "usage", "--by", bad)
        assert wrong.returncode == 2 and "--by" in wrong.stderr and "Traceback" not in wrong.stderr


def test_make_dev_attributes_spend_and_keeps_it_out_of_metrics_and_logs(
    stores: Stores, upstream: Upstream, moto_endpoint: str
) -> None:
    # GIVEN `make dev`'s relay on the test's table and mock upstream
    env = {"RELAY_DYNAMODB_ENDPOINT": moto_endpoint, "RELAY_TABLE_NAME": stores.table_name}
    with dev_server(**env, RELAY_UPSTREAM_URL=upstream.url) as dev:
        # WHEN clients send requests for end users and teams, by body and by header, streamed and not
        sent = [
            (chat_body(user="u-alice", metadata={"team": "t-search"}, mock=SHORT), None),
            (chat_body(user="u-alice", stream=True, stream_options={"include_usage": True}, mock=SHORT), "team=t-ads"),
            (chat_body(user="u-bob", metadata={"team": "t-ads"}, mock=SHORT), "team=t-search"),
            (chat_body(mock=SHORT), None),
        ]
        usages = []
        for body, tags in sent:
            response = _post(dev.url, dev.key, body, tags)
            assert response.status_code == 200, response.text
            usages.append(_usage_of(response, body))
            dev.wait_finished(response.headers["x-request-id"])
        emf, logs = dev.emf(), dev.logs()
    # THEN `usage --by user` and `--by tag:team` show each one's requests, at the price of what the upstream reported
    cost = [PriceTable.load(None)("gpt-4o-mini", usage) or Decimal(0) for usage in usages]
    by_user = _groups(stores, moto_endpoint, "user")
    assert by_user == {"u-alice": (2, cost[0] + cost[1]), "u-bob": (1, cost[2]), "-": (1, cost[3])}
    assert all(c > 0 for c in cost)
    by_team = _groups(stores, moto_endpoint, "tag:team")
    assert by_team == {"t-search": (2, cost[0] + cost[2]), "t-ads": (1, cost[1]), "-": (1, cost[3])}
    # AND no metric and no log line of the relay holds a user or a tag value
    assert emf and any(log.get("message") == "request finished" for log in logs)
    for line in [*map(json.dumps, emf), *map(json.dumps, logs)]:
        assert not any(value in line for value in ("u-alice", "u-bob", "t-search", "t-ads"))


def _usage_of(response: httpx.Response, body: dict[str, Any]) -> Usage:
    """The usage the client was told: the completion's, or the usage chunk of a stream."""
    if body.get("stream"):
        chunks = [json.loads(event) for event in sse_events(response.text) if event != "[DONE]"]
        usage = next(chunk["usage"] for chunk in chunks if chunk.get("usage"))
    else:
        usage = response.json()["usage"]
    return Usage(usage["prompt_tokens"], usage["completion_tokens"])


def _groups(stores: Stores, moto_endpoint: str, by: str) -> dict[str, tuple[int, Decimal]]:
    done = cli(stores, moto_endpoint, "usage", "--since", "1h", "--by", by, "--json")
    assert done.returncode == 0, done.stderr
    return {g[by]: (g["requests"], Decimal(g["cost_usd"])) for g in json.loads(done.stdout)["groups"]}

"""Spend attribution (pure): the end user and tags of a request from `user`, `metadata` and `X-Relay-Tags`, their
bounds and precedence; what the upstream body keeps of them; the usage record and the request's ledger item that
carry them; the CLI's grouping by them; and that they never reach a metric or the per-request log line."""

from __future__ import annotations

import argparse
import dataclasses
from decimal import Decimal
from typing import Any

import anyio
import pytest
from starlette.datastructures import Headers

from llm_relay.attribution import (
    MAX_KEY_CHARS,
    MAX_TAGS,
    MAX_USER_CHARS,
    MAX_VALUE_CHARS,
    NO_ATTRIBUTION,
    Attribution,
    as_item,
    attribution_of,
    from_item,
    tags_header,
)
from llm_relay.chat_request import validate_chat_request
from llm_relay.commands.usage import group_by, grouped, record_cells, record_csv_cells
from llm_relay.dynamo import layout
from llm_relay.errors import InvalidRequest
from llm_relay.ledger import lost_record
from llm_relay.limits import Ticket
from llm_relay.pricing import PriceTable
from llm_relay.upstreams.bedrock_request import converse_params
from llm_relay.upstreams.ollama_request import ollama_body
from llm_relay.usage import record_for, refused_record
from tests.unit.test_metrics import context, outcome
from tests.unit.test_telemetry_ledger import telemetry
from tests.unit.test_usage import record

TAGGED = Attribution("alice@example.com", {"feature": "autocomplete", "team": "search"})


def refused(user: object = None, metadata: object = None, header: str | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        attribution_of(user, metadata, header)
    assert raised.value.status_code == 400
    return raised.value


# --- the end user -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("user", "expected"), [(None, None), ("", None), ("u-42", "u-42"), ("x" * 512, "x" * 512)])
def test_the_user_is_a_string_and_an_empty_one_is_none(user: object, expected: str | None) -> None:
    assert attribution_of(user, None, None).user == expected


@pytest.mark.parametrize("user", [42, ["u"], {"id": "u"}, True, "x" * (MAX_USER_CHARS + 1)])
def test_any_other_user_is_a_400_naming_it(user: object) -> None:
    assert refused(user=user).param == "user"


# --- metadata ---------------------------------------------------------------------------------------------------
def test_metadata_at_its_bounds_is_taken_whole() -> None:
    # GIVEN 16 pairs, the longest name and value allowed among them
    metadata = {f"k{i}": f"v{i}" for i in range(MAX_TAGS - 1)} | {"n" * MAX_KEY_CHARS: "v" * MAX_VALUE_CHARS}
    # THEN every pair is a tag
    assert dict(attribution_of(None, metadata, None).tags) == metadata


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ("team=search", "metadata"),
        (["team", "search"], "metadata"),
        ({f"k{i}": "v" for i in range(MAX_TAGS + 1)}, "metadata"),
        ({"n" * (MAX_KEY_CHARS + 1): "v"}, "metadata"),
        ({"": "v"}, "metadata"),
        ({7: "v"}, "metadata"),
        ({"team": 7}, "metadata.team"),
        ({"team": None}, "metadata.team"),
        ({"team": {"name": "search"}}, "metadata.team"),
        ({"team": "v" * (MAX_VALUE_CHARS + 1)}, "metadata.team"),
    ],
)
def test_metadata_out_of_bounds_is_a_400_naming_it(metadata: object, param: str) -> None:
    assert refused(metadata=metadata).param == param


def test_a_long_name_is_quoted_short_in_the_message() -> None:
    error = refused(metadata={"n" * 10_000: "v"})
    assert "longer than 64 characters" in error.message and len(error.message) < 200


# --- the header -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "tags"),
    [
        ("team=search, feature=autocomplete", {"team": "search", "feature": "autocomplete"}),
        ("team=search,feature=autocomplete", {"team": "search", "feature": "autocomplete"}),
        (" \tteam = search ,", {"team": "search"}),
        ("team=search,, ,feature=x", {"team": "search", "feature": "x"}),  # empty list elements are no pairs
        ("token=YWJj==", {"token": "YWJj=="}),  # a value may hold `=`: the name ends at the first one
        ("team=", {}),  # an empty value is no tag
        ("", {}),
        (",", {}),
        ("n" * MAX_KEY_CHARS + "=" + "v" * MAX_VALUE_CHARS, {"n" * MAX_KEY_CHARS: "v" * MAX_VALUE_CHARS}),
        (",".join(f"k{i}=v" for i in range(MAX_TAGS)), {f"k{i}": "v" for i in range(MAX_TAGS)}),
    ],
)
def test_the_header_is_comma_separated_name_value_pairs(header: str, tags: dict[str, str]) -> None:
    assert dict(attribution_of(None, None, header).tags) == tags


@pytest.mark.parametrize(
    "header",
    [
        "team",
        "team=search, feature",
        "=search",
        " = search",
        "team=a, team=b",
        "n" * (MAX_KEY_CHARS + 1) + "=v",
        "team=" + "v" * (MAX_VALUE_CHARS + 1),
        ",".join(f"k{i}=v" for i in range(MAX_TAGS + 1)),
        "team=s\u00e9arch",
        "team=search\x00",
        "team=a\nb",
    ],
)
def test_a_malformed_header_is_a_400_naming_it(header: str) -> None:
    error = refused(header=header)
    assert error.param == "x-relay-tags" and "X-Relay-Tags" in error.message


def test_several_header_lines_are_one_list() -> None:
    # GIVEN a request with two X-Relay-Tags lines (HTTP: the same as one line joining them with commas)
    headers = Headers(raw=[(b"x-relay-tags", b"team=search"), (b"x-relay-tags", b"feature=autocomplete")])
    # THEN both are read, and the lines together follow the header's rules
    assert tags_header(headers) == "team=search, feature=autocomplete"
    assert tags_header(Headers(raw=[])) is None
    twice = Headers(raw=[(b"x-relay-tags", b"team=a"), (b"x-relay-tags", b"team=b")])
    assert refused(header=tags_header(twice)).param == "x-relay-tags"


# --- precedence -------------------------------------------------------------------------------------------------
def test_the_header_wins_per_tag_and_the_rest_is_merged() -> None:
    # GIVEN an application's metadata and a gateway's header naming `team` both
    got = attribution_of("u-1", {"team": "app-said", "feature": "chat"}, "team=search, env=prod")
    # THEN the header's team, the body's feature, the header's env, sorted by name
    assert list(got.tags.items()) == [("env", "prod"), ("feature", "chat"), ("team", "search")]
    assert got.user == "u-1"


def test_an_empty_header_value_unsets_a_metadata_tag() -> None:
    assert dict(attribution_of(None, {"team": "app-said", "feature": "chat"}, "team=").tags) == {"feature": "chat"}
    assert dict(attribution_of(None, {"team": ""}, None).tags) == {}


def test_more_than_16_tags_together_is_a_400_naming_the_header() -> None:
    # GIVEN 10 tags in the body and 10 others in the header, each within its own bound
    metadata = {f"b{i}": "v" for i in range(10)}
    header = ",".join(f"h{i}=v" for i in range(10))
    # THEN together they are too many
    assert refused(metadata=metadata, header=header).param == "x-relay-tags"
    # AND the same names in both are counted once
    assert len(attribution_of(None, metadata, ",".join(f"b{i}=w" for i in range(10))).tags) == 10


def test_no_attribution_and_immutable_tags() -> None:
    assert attribution_of(None, None, None) == NO_ATTRIBUTION == Attribution()
    with pytest.raises(TypeError):
        attribution_of(None, {"team": "a"}, None).tags["team"] = "b"  # type: ignore[index]


# --- the chat request and the upstream body ----------------------------------------------------------------------
def chat(**fields: Any) -> Any:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields}
    return validate_chat_request(payload, max_tokens_cap=4096, allowed_models=None)


@pytest.mark.parametrize(("fields", "param"), [({"user": 42}, "user"), ({"metadata": "team=a"}, "metadata")])
def test_the_chat_request_checks_the_types(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        chat(**fields)
    assert raised.value.param == param


def test_user_goes_upstream_and_metadata_stays_in_the_relay() -> None:
    # GIVEN a request with a user and metadata
    request = chat(user="u-1", metadata={"team": "search"})
    # THEN the upstream gets the user (abuse monitoring) but not the metadata (the relay's attribution)
    body = request.upstream_body()
    assert body["user"] == "u-1" and "metadata" not in body
    # AND the fields are there for the attribution
    assert attribution_of(request.user, request.metadata, None) == Attribution("u-1", {"team": "search"})
    # AND a client that asked the provider to store the completion keeps its metadata there
    stored = chat(user="u-1", metadata={"team": "search"}, store=True).upstream_body()
    assert stored["metadata"] == {"team": "search"}


def test_no_translator_refuses_the_attribution() -> None:
    # GIVEN the upstream body of a request with a user and metadata
    body = chat(user="u-1", metadata={"team": "search"}).upstream_body()
    # THEN Ollama drops the user (it has no place for it), Bedrock passes it as request metadata
    assert "user" not in ollama_body(body, "llama3")
    assert converse_params(body, "m")["requestMetadata"] == {"user": "u-1"}


# --- the usage record and the ledger item ------------------------------------------------------------------------
def test_every_record_of_a_request_carries_its_attribution() -> None:
    # GIVEN a request with a user and tags
    ctx = dataclasses.replace(context(), attribution=TAGGED)
    # THEN its record, whatever ended it, carries them, and so does its JSON
    for built in (record_for(ctx, outcome()), refused_record(ctx, "rate_limit_exceeded", 0.1)):
        assert built.attribution == TAGGED
        assert built.as_json()["user"] == "alice@example.com"
        assert built.as_json()["tags"] == {"feature": "autocomplete", "team": "search"}
    assert record_for(context(), outcome()).as_json()["user"] is None


def test_the_record_item_holds_the_attribution_and_reads_it_back() -> None:
    original = record(attribution=TAGGED)
    item = layout.usage_item(original, 30)
    assert item["user"] == "alice@example.com" and item["tags"] == {"feature": "autocomplete", "team": "search"}
    assert layout.usage_record(item) == original
    # AND a record without attribution has neither attribute
    bare = layout.usage_item(record(), 30)
    assert "user" not in bare and "tags" not in bare and layout.usage_record(bare).attribution == NO_ATTRIBUTION


def test_a_request_settled_as_lost_keeps_its_attribution() -> None:
    # GIVEN the request item admission writes for an attributed request
    base = {**layout.request_item("req_1", "rk_a", "gpt-4o-mini", 3600), **as_item(TAGGED)}
    item = layout.admitted_item(
        base, lease_until=2_000_000_000, started_epoch=1.7e9, mode="sse", prompt_tokens=7, ticket=Ticket()
    )
    # WHEN a reconciler settles it from that item
    lost = lost_record(layout.unfinished_of(item), PriceTable.load(None))
    # THEN its record names the same user and tags
    assert lost.attribution == TAGGED
    assert from_item({}) is NO_ATTRIBUTION and as_item(NO_ATTRIBUTION) == {}


# --- never a metric dimension or a per-request log field --------------------------------------------------------
def test_attribution_reaches_no_metric_and_no_request_log_line() -> None:
    # GIVEN telemetry of a finished request with a user and tags
    tele, lines, logged = telemetry()
    anyio.run(tele.finalize, dataclasses.replace(context(), attribution=TAGGED), outcome())
    # THEN metrics and the "request finished" line were written, and none holds the user or a tag
    assert lines and "request finished" in logged.getvalue()
    for text in [*lines, logged.getvalue()]:
        for value in ("alice@example.com", "autocomplete", "search", "feature"):
            assert value not in text


# --- the CLI ----------------------------------------------------------------------------------------------------
RECORDS = [
    record(request_id="r1", attribution=Attribution("alice", {"team": "search"}), cost_usd=Decimal("0.01")),
    record(request_id="r2", attribution=Attribution("alice", {"team": "ads"}), cost_usd=Decimal("0.02")),
    record(request_id="r3", attribution=Attribution("bob", {"team": "search"}), cost_usd=Decimal("0.04")),
    record(request_id="r4", cost_usd=Decimal("0.08")),
]


def test_usage_by_user_and_by_tag() -> None:
    by_user = {name: (t.requests, t.cost_usd) for name, t in grouped(RECORDS, "user").items()}
    assert by_user == {"-": (1, Decimal("0.08")), "alice": (2, Decimal("0.03")), "bob": (1, Decimal("0.04"))}
    by_team = {name: (t.requests, t.cost_usd) for name, t in grouped(RECORDS, "tag:team").items()}
    assert by_team == {"-": (1, Decimal("0.08")), "ads": (1, Decimal("0.02")), "search": (2, Decimal("0.05"))}
    assert {name: t.requests for name, t in grouped(RECORDS, "tag:env").items()} == {"-": 4}


def test_the_by_option_takes_a_group_or_a_tag() -> None:
    assert [group_by(v) for v in ("user", "key", "tag:team", "tag:a:b")] == ["user", "key", "tag:team", "tag:a:b"]
    for bad in ("colour", "tag:", "tag:" + "n" * (MAX_KEY_CHARS + 1), "tags"):
        with pytest.raises(argparse.ArgumentTypeError):
            group_by(bad)


def test_a_record_row_shows_user_and_tags_escaped() -> None:
    tagged = record(attribution=Attribution("eve\n[relay] forged", {"team": "search", "x": "a\tb"}))
    assert record_cells(tagged)[-3:-1] == ["eve\\n[relay] forged", "team=search x=a\\tb"]
    assert record_csv_cells(record())[-3:-1] == ["-", "-"]

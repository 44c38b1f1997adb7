"""The upstream table (`RELAY_UPSTREAMS`): validation at start-up, and which upstreams a model goes to."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_relay.errors import ConfigurationError, ModelNotAllowed
from llm_relay.upstreams.table import load_table

EXAMPLE = [
    {"name": "local", "kind": "ollama", "url": "http://127.0.0.1:11434", "models": ["llama*"]},
    {"name": "claude", "kind": "bedrock", "region": "eu-west-1", "models": ["anthropic.*"], "fallbacks": ["local"]},
    {
        "name": "openai",
        "kind": "openai",
        "url": "https://api.openai.com/v1/",
        "api_key_env": "OPENAI_API_KEY",
        "models": ["*"],
        "rewrite": "gpt-4o-mini",
        "fallbacks": ["local", "claude"],
    },
]
ENV = {"OPENAI_API_KEY": "sk-test"}


def _table(entries: list[dict[str, Any]], env: dict[str, str] | None = None) -> Any:
    return load_table(json.dumps(entries), None, env if env is not None else ENV)


def test_a_model_goes_to_the_first_upstream_whose_pattern_fits_then_its_fallbacks() -> None:
    table = _table(EXAMPLE)
    assert [(r.name, r.model) for r in table.routes("llama3.2")] == [("local", "llama3.2")]
    assert [(r.name, r.model) for r in table.routes("anthropic.claude-3-haiku")] == [
        ("claude", "anthropic.claude-3-haiku"),
        ("local", "anthropic.claude-3-haiku"),
    ]
    # the rewrite applies to its own upstream only; each fallback sends its own name (here the client's)
    assert [(r.name, r.model) for r in table.routes("my-alias")] == [
        ("openai", "gpt-4o-mini"),
        ("local", "my-alias"),
        ("claude", "my-alias"),
    ]


def test_patterns_are_case_sensitive_globs() -> None:
    table = _table([{"name": "a", "kind": "openai", "url": "http://a/v1", "models": ["gpt-4o?", "o[13]"]}])
    assert table.serves("gpt-4oX") and table.serves("o1") and table.serves("o3")
    assert not table.serves("GPT-4oX") and not table.serves("o2") and not table.serves("gpt-4o")


def test_a_model_no_upstream_serves_is_refused_with_the_model_named() -> None:
    table = _table([{"name": "a", "kind": "ollama", "url": "http://a:11434", "models": ["llama*"]}])
    with pytest.raises(ModelNotAllowed) as refused:
        table.routes("gpt-4o")
    assert refused.value.param == "model" and "gpt-4o" in refused.value.message


def test_the_shorthand_is_one_openai_upstream_for_every_model() -> None:
    table = load_table(None, "http://upstream/v1", {})
    [route] = table.routes("anything")
    assert (route.name, route.spec.kind, route.spec.url, route.model) == (
        "default",
        "openai",
        "http://upstream/v1",
        "anything",
    )


def test_literal_models_are_listed() -> None:
    assert _table(EXAMPLE).literal_models() == []
    table = _table([{"name": "a", "kind": "openai", "url": "http://a/v1", "models": ["gpt-4o", "o*"]}])
    assert table.literal_models() == ["gpt-4o"]


@pytest.mark.parametrize(
    ("entries", "env", "message"),
    [
        ("not json", ENV, "RELAY_UPSTREAMS is not valid JSON"),
        ("[" * 5000 + "]" * 5000, ENV, "RELAY_UPSTREAMS is nested too deeply"),  # past the parser's recursion limit
        ({"name": "a"}, ENV, "must be a JSON list"),
        ([], ENV, "RELAY_UPSTREAMS is empty"),
        ([{"name": "a", "kind": "grpc", "url": "http://a", "models": ["*"]}], ENV, "RELAY_UPSTREAMS[0]: kind"),
        ([{"name": "a", "kind": "openai", "models": ["*"]}], ENV, "needs a url"),
        ([{"name": "a", "kind": "openai", "url": "ftp://a", "models": ["*"]}], ENV, "http:// or https://"),
        (
            [{"name": "a", "kind": "openai", "url": "http://a", "models": []}],
            ENV,
            "serves no model and is no upstream's",
        ),
        (
            [
                {
                    "name": "a",
                    "kind": "openai",
                    "url": "http://a",
                    "models": ["*"],
                    "api_key_env": "AWS_SECRET_ACCESS_KEY",
                }
            ],
            ENV,
            "AWS_",
        ),
        ([{"name": "a", "kind": "openai", "url": "http://a", "models": ["*"], "modles": 1}], ENV, "modles"),
        ([{"name": "a b", "kind": "openai", "url": "http://a", "models": ["*"]}], ENV, "RELAY_UPSTREAMS[0]: name"),
        (
            [{"name": "a", "kind": "openai", "url": "http://a", "models": ["*"], "fallbacks": ["b"]}],
            ENV,
            "falls back to unknown upstream(s) b",
        ),
        ([{"name": "a", "kind": "openai", "url": "http://a", "models": ["*"], "fallbacks": ["a"]}], ENV, "itself"),
        (
            [
                {"name": "a", "kind": "openai", "url": "http://a", "models": ["*"], "fallbacks": ["b", "b"]},
                {"name": "b", "kind": "openai", "url": "http://b", "models": []},
            ],
            ENV,
            "lists a fallback twice",
        ),
        (
            [
                {"name": "a", "kind": "openai", "url": "http://a", "models": ["x"]},
                {"name": "a", "kind": "openai", "url": "http://b", "models": ["*"]},
            ],
            ENV,
            "must be unique (a repeats)",
        ),
        (
            [{"name": "a", "kind": "openai", "url": "http://a", "models": ["*"], "api_key_env": "MISSING_KEY"}],
            ENV,
            "takes its key from MISSING_KEY, which is not set",
        ),
        ([{"name": "a", "kind": "bedrock", "models": ["*"], "api_key_env": "OPENAI_API_KEY"}], ENV, "IAM role"),
        ([{"name": "a", "kind": "openai", "url": "http://a", "models": ["*"], "fields": {}}], ENV, "ndjson kind"),
    ],
)
def test_a_table_that_would_route_wrongly_refuses_to_start(entries: Any, env: dict[str, str], message: str) -> None:
    text = entries if isinstance(entries, str) else json.dumps(entries)
    with pytest.raises(ConfigurationError) as refused:
        load_table(text, None, env)
    assert message in str(refused.value)


def test_both_the_table_and_the_shorthand_is_ambiguous() -> None:
    with pytest.raises(ConfigurationError, match="set one"):
        load_table(json.dumps(EXAMPLE), "http://upstream/v1", ENV)


def test_neither_names_both_variables() -> None:
    with pytest.raises(ConfigurationError, match=r"RELAY_UPSTREAM_URL is not set.*RELAY_UPSTREAMS"):
        load_table(None, None, {})


def test_an_upstream_without_models_is_a_fallback_only() -> None:
    table = _table(
        [
            {"name": "main", "kind": "openai", "url": "http://a/v1", "models": ["*"], "fallbacks": ["spare"]},
            {"name": "spare", "kind": "openai", "url": "http://b/v1", "models": []},
        ]
    )
    assert [route.name for route in table.routes("gpt-4o")] == ["main", "spare"]
    assert table.literal_models() == []  # never listed by /v1/models, never chosen for a model of its own

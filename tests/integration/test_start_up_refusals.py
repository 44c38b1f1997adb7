"""A configuration the relay cannot use ends its start with one line on stderr and exit status 2, never a traceback:
through the production entry point (`python -m llm_relay.serve`, what run.sh execs) and through `make dev`
(`python -m llm_relay_dev.devserver`, what the Makefile runs), each a process of its own. And a DynamoDB that
cannot be reached does not keep the production entry point from starting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.servers import free_port, wait_healthy

NESTED = 10_000  # levels: past the JSON parser's recursion limit, within what one environment variable may hold
UPSTREAM = "http://127.0.0.1:9/v1"  # never contacted: the start is refused before anything is


def _nested_upstreams() -> str:
    inner = '{"a": ' * NESTED + "1" + "}" * NESTED
    return f'[{{"name": "a", "kind": "ndjson", "url": "{UPSTREAM}", "models": ["*"], "fields": {inner}}}]'


CASES = {
    "prices not JSON": ({"RELAY_PRICES_JSON": '{"gpt-4o-mini": {"input": 0.15,'}, "RELAY_PRICES_JSON: not valid JSON"),
    "a negative price": (
        {"RELAY_PRICES_JSON": '{"gpt-4o-mini": {"input": "-0.15", "output": "0.60"}}'},
        "RELAY_PRICES_JSON: model 'gpt-4o-mini' has an invalid input price '-0.15'",
    ),
    "prices nested deeply": (
        {"RELAY_PRICES_JSON": '{"m": ' * NESTED + "1" + "}" * NESTED},
        "RELAY_PRICES_JSON: nested too deeply",
    ),
    "upstreams nested deeply": ({"RELAY_UPSTREAMS": _nested_upstreams()}, "RELAY_UPSTREAMS is nested too deeply"),
    "upstreams nested as lists": (
        {"RELAY_UPSTREAMS": "[" * NESTED + "]" * NESTED},
        "RELAY_UPSTREAMS is nested too deeply",
    ),
}


def _environment(config: dict[str, str], port: int) -> dict[str, str]:
    """The relay's environment: nothing of this process's RELAY_ settings, a DynamoDB and an upstream that are never
    contacted, and `config` over them."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RELAY_")}
    env.update(
        {
            "PORT": str(port),
            "RELAY_DYNAMODB_ENDPOINT": "http://127.0.0.1:9",  # never contacted either
            "RELAY_DEV_LOG": "json",
            **({} if "RELAY_UPSTREAMS" in config else {"RELAY_UPSTREAM_URL": UPSTREAM}),
            **config,
        }
    )
    return env


def _start(module: str, config: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = _environment(config, free_port())
    return subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module", ["llm_relay.serve", "llm_relay_dev.devserver"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_configuration_that_cannot_be_used_is_one_line_and_exit_2(module: str, case: str) -> None:
    config, names = CASES[case]
    # WHEN the relay starts with it
    done = _start(module, config)
    # THEN it exits 2 with one line naming the variable and what is wrong with it, and no traceback
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.startswith("llm-relay: refusing to start: ") and names in done.stderr, done.stderr


def test_the_production_entry_point_starts_when_dynamodb_cannot_be_reached() -> None:
    """Start-up touches no DynamoDB: a table that cannot be reached is each request's 503, never a relay that does
    not start (the web adapter's readiness check would keep the function from serving anything)."""
    port = free_port()
    # its output goes where pytest captures this test's, shown if it fails
    process = subprocess.Popen([sys.executable, "-m", "llm_relay.serve"], env=_environment({}, port))
    try:
        wait_healthy(f"http://127.0.0.1:{port}", alive=lambda: process.poll() is None, timeout=60)
    finally:
        process.terminate()
        process.wait(timeout=30)

"""The compliance gate's audit trail through `make dev`'s own entry point: counts by entity type in the log line, the
EMF `Redactions` metric, the usage record and `llm-relay usage`, and no raw value in any of them nor in any error
body, whatever way the stream ends; the human console line (the mode a user gets by default) says what was caught."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.devserver_support import DevServer, dev_server
from tests.unit.sanitize_corpus import POSITIVES

# Every positive of the corpus (phone numbers as the relay reads them: region US), one sentence each: the answer the
# mock streams, and the prompt the client sends.
CORPUS = [p for p in POSITIVES if p.region == "US"]
TEXT = " ".join(f"Please use {p.value} for this." for p in CORPUS)
VALUES = sorted({p.value for p in CORPUS}, key=len, reverse=True)


@pytest.fixture(scope="module")
def dev() -> Iterator[DevServer]:
    with dev_server(RELAY_SANITIZE="redact", RELAY_SANITIZE_PROMPT="redact") as server:
        yield server


def _post(dev: DevServer, path: str, **body: Any) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": TEXT}], **body}
    return httpx.post(f"{dev.url}{path}", json=payload, headers={"authorization": f"Bearer {dev.key}"}, timeout=60)


def _mock(**extra: Any) -> dict[str, Any]:
    return {"text": TEXT, "chunk_chars": 7, "chunk_delay_ms": 0, "ttft_ms": 0, **extra}


def test_no_raw_value_reaches_any_log_metric_record_or_body(dev: DevServer) -> None:
    # GIVEN a relay that redacts prompts and answers, and every path a stream can take
    responses = [
        _post(dev, "/v1/chat/completions", stream=True, mock=_mock()),
        _post(dev, "/api/v1/chat/stream", mock=_mock()),
        _post(dev, "/v1/chat/completions", mock=_mock()),
        _post(dev, "/api/v1/chat/stream", mock=_mock(error_after=40)),  # an upstream error mid-answer
        _post(dev, "/api/v1/chat/stream", mock=_mock(drop_after=25)),  # a connection dropped mid-value
        _post(dev, "/v1/chat/completions", stream=True, mock=_mock(tool_args=json.dumps({"note": TEXT}))),
    ]
    assert [r.status_code for r in responses] == [200] * len(responses)
    finished = [dev.wait_finished(r.headers["x-request-id"]) for r in responses]
    cli = subprocess.run(
        [sys.executable, "-m", "llm_relay.cli", "usage", "--json"],
        capture_output=True,
        text=True,
        env={**dev.env, "RELAY_DYNAMODB_ENDPOINT": dev.moto_url},
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    # THEN the audit is there: counts by entity type on every log line, the metric and the records
    assert all(line["redactions"] and line["prompt_redactions"] for line in finished[:3])
    entities = {doc["entity"] for doc in dev.emf() if "Redactions" in doc}
    assert {"EMAIL", "CREDIT_CARD", "IBAN", "PHONE_NUMBER", "JWT", "PRIVATE_KEY"} <= entities
    records = {r["request_id"]: r for r in json.loads(cli.stdout)["records"]}
    assert all(records[r.headers["x-request-id"]]["redactions"] for r in responses[:3])
    # AND no raw value appears anywhere: bodies, log lines, EMF, stderr, the CLI's output
    text = "\n".join([*dev.stdout, *dev.stderr, cli.stdout, cli.stderr, *(r.text for r in responses)])
    leaked = [value for value in VALUES if value in text]
    assert not leaked, f"raw values leaked: {leaked[:3]}"


def test_the_default_console_line_says_what_was_caught() -> None:
    with dev_server(RELAY_SANITIZE="redact", RELAY_DEV_LOG="human") as dev:
        response = _post(dev, "/api/v1/chat/stream", mock=_mock(text="mail jane.roe@example.org now"))
        line = dev.wait_for_output(f"[relay] {response.headers['x-request-id']} ")
        assert "redactions=EMAIL=1" in line
        assert "jane.roe" not in "\n".join(dev.stdout + dev.stderr)

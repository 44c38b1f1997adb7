"""The documented answer to every event in events/ (docs/lambda-local.md), checked the same way whichever path ran
the event: the Mangum handler in-process, the built `sam build` artifact, the Runtime Interface Emulator
(`make invoke`), or uvicorn under `run.sh` (the streaming path), whose HTTP answer is put in the same shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"
DEV_KEY = "lr-dev-local-key"

Response = dict[str, Any]


def event_names() -> list[str]:
    return sorted(path.stem for path in EVENTS_DIR.glob("*.json"))


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return event


def check_response(name: str, response: Response) -> None:
    """Assert that `response` (a Lambda response object) is the documented answer to event `name`."""
    assert response["isBase64Encoded"] is False, f"{name}: body came back base64-encoded"
    headers = {k.lower(): v for k, v in response["headers"].items()}
    assert headers["x-request-id"].startswith("req_"), f"{name}: no x-request-id"
    CHECKS[name](response["statusCode"], headers, response["body"])


def _content_type(headers: dict[str, str]) -> str:
    return headers["content-type"].split(";")[0].strip()


def _error_code(status: int, headers: dict[str, str], body: str) -> str:
    assert _content_type(headers) == "application/json"
    code: str = json.loads(body)["error"]["code"]
    return code


def _streamed(status: int, headers: dict[str, str], body: str) -> None:
    assert status == 200
    assert _content_type(headers) == "text/event-stream"
    frames = [frame for frame in body.split("\n\n") if frame.strip()]
    assert all(frame.startswith("data: ") for frame in frames), frames[:3]
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(frame.removeprefix("data: ")) for frame in frames[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip(), "no content streamed"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0  # include_usage: true


def _buffered(status: int, headers: dict[str, str], body: str) -> None:
    assert status == 200
    assert _content_type(headers) == "application/json"
    completion = json.loads(body)
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"].strip()
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["completion_tokens"] > 0


def _ndjson(status: int, headers: dict[str, str], body: str) -> None:
    assert status == 200
    assert _content_type(headers) == "application/x-ndjson"
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    text = "".join(line["choices"][0]["delta"].get("content") or "" for line in lines[:-1] if line.get("choices"))
    assert text.strip(), "no content streamed"
    summary = lines[-1]
    assert summary["object"] == "relay.summary"
    assert summary["finish_reason"] == "stop"
    assert summary["usage"]["completion_tokens"] > 0


def _missing_key(status: int, headers: dict[str, str], body: str) -> None:
    assert status == 401
    assert _error_code(status, headers, body) == "missing_api_key"


def _malformed_json(status: int, headers: dict[str, str], body: str) -> None:
    assert status == 400
    assert _error_code(status, headers, body) == "invalid_json"


def _healthz(status: int, headers: dict[str, str], body: str) -> None:
    assert status == 200
    assert json.loads(body) == {"status": "ok"}


CHECKS: dict[str, Callable[[int, dict[str, str], str], None]] = {
    "chat-streamed": _streamed,
    "chat-buffered": _buffered,
    "chat-ndjson": _ndjson,
    "chat-missing-key": _missing_key,
    "chat-malformed-json": _malformed_json,
    "healthz": _healthz,
}

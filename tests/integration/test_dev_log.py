"""`make dev`'s console (its own entry point, default human log): one line per request, warnings, nothing else;
mock faults without tracebacks; control characters escaped, so a model name cannot forge a line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import httpx

from tests.integration.devserver_support import DevServer, dev_server
from tests.servers import free_port
from tests.waiting import PATIENCE_S, wait_until

FORGED = "gpt\n[relay] req_forged rk_forged gpt-4o-mini sse: stop"


def _chat(dev: DevServer, key: str | None = None, model: str = "gpt-4o-mini", **mock: object) -> str:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}], "mock": mock}
    headers = {"authorization": f"Bearer {key or dev.key}"}
    response = httpx.post(f"{dev.url}/v1/chat/completions", headers=headers, json=body, timeout=30)
    return response.headers["x-request-id"]


def _abandon_body(dev: DevServer) -> None:
    url = urlsplit(dev.url)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {dev.key}\r\n"
        sock.sendall(f"{head}Content-Length: 500\r\n\r\n{{}}".encode())
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass


def _console(dev: DevServer) -> list[str]:
    """What the server printed after its banner."""
    return [line for line in list(dev.stdout) if line and not line.startswith(" ") and line != "llm-relay dev server"]


def test_one_line_per_request_warnings_and_nothing_else() -> None:
    with dev_server(RELAY_DEV_LOG="human") as dev:
        # WHEN requests end every way: normally, dropped by the upstream, malformed, refused upstream, an
        # unpriced model whose name holds a newline, a bad key, and a body the client abandons
        finished = [
            _chat(dev, tokens=3, chunk_delay_ms=0),
            _chat(dev, tokens=10, chunk_delay_ms=0, drop_after=3),
            _chat(dev, tokens=5, chunk_delay_ms=0, malformed_after=2),
            _chat(dev, status=500),
            _chat(dev, model=FORGED, tokens=2, chunk_delay_ms=0),
        ]
        rejected = _chat(dev, key="lr-not-a-key")
        _abandon_body(dev)
        expected = len(finished) + 2
        wait_until(lambda: sum(line.startswith("[relay] ") for line in _console(dev)) >= expected, "request lines")
        console = _console(dev)
        # THEN one [relay] line per request, and otherwise only warnings, each one line
        relay_lines = [line for line in console if line.startswith("[relay] ")]
        assert len(relay_lines) == expected, console
        assert all(line.startswith(("[relay] ", "[warning] ")) for line in console), console
        for request_id in finished:
            assert sum(line.startswith(f"[relay] {request_id} ") for line in relay_lines) == 1
        assert f"[relay] {rejected} rejected: 401 invalid_api_key" in relay_lines
        assert any(line.endswith("rejected: 400 invalid_request") for line in relay_lines)
        # AND the mock's fault is one warning, no traceback anywhere, no JSON or EMF documents
        assert "[warning] mock_upstream: dropped the connection after 3 chunks (drop_after)" in console
        everything = "\n".join(list(dev.stdout) + list(dev.stderr))
        assert "Traceback" not in everything and '{"_aws"' not in everything and not dev.stderr
        # AND the newline in the model name is escaped: no line was forged
        assert not any(line.startswith("[relay] req_forged") for line in console)
        assert sum("gpt\\n[relay] req_forged" in line for line in relay_lines) == 1


def test_an_unreachable_dynamodb_is_one_line_naming_it() -> None:
    # GIVEN `make dev` as a user starts it, pointed at a DynamoDB endpoint where nothing listens
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"PORT": str(free_port()), "RELAY_DYNAMODB_ENDPOINT": endpoint})
    # WHEN it starts
    done = subprocess.run(
        [sys.executable, "-m", "llm_relay_dev.devserver"], env=env, capture_output=True, text=True, timeout=PATIENCE_S
    )
    # THEN it exits non-zero with one line that names the endpoint, and no traceback
    printed = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode != 0
    assert len(printed) == 1 and endpoint in printed[0] and "RELAY_DYNAMODB_ENDPOINT" in printed[0], printed

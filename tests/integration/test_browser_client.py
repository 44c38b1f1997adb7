"""The browser client (clients/browser) against `make dev`'s entry point, run by Node.js's test runner:
streaming (NDJSON and SSE), cancel (abort plus the cancel call) and errors."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.devserver_support import DevServer, dev_server
from tests.waiting import wait_until

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "browser"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_browser_client_streams_cancels_and_reports_errors() -> None:
    with dev_server(RELAY_DEV_KEY="lr-browser-client-key") as dev:
        env = {**os.environ, "RELAY_URL": dev.url, "RELAY_KEY": dev.key}
        run = subprocess.run(
            ["node", "--test", str(CLIENT / "llm-relay-client.test.mjs")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "# fail 0" in run.stdout and "# pass 7" in run.stdout
        # AND the relay ended the cancelled stream as client_cancelled, upstream closed
        request_id = next(line.split()[-1] for line in run.stdout.splitlines() if "CANCELLED req_" in line)
        dev.wait_for_output(request_id)
        finished = next(
            log
            for log in dev.logs()
            if log.get("request_id") == request_id and log.get("message") == "request finished"
        )
        assert finished["reason"] == "client_cancelled"
        assert finished["usage_source"] == "estimated"
        # AND the requests cancelled before their headers and with stream: false (named by the client's own id)
        # ended as client_cancelled too
        for marker in ("CANCELLED_EARLY", "CANCELLED_NOSTREAM"):
            client_id = next(line.split()[-1] for line in run.stdout.splitlines() if f"{marker} " in line)
            log = wait_until(functools.partial(_finished_with_client_id, dev, client_id), f"{marker} finalized")
            assert log["reason"] == "client_cancelled", (marker, log)


def _finished_with_client_id(dev: DevServer, client_id: str) -> dict[str, Any] | None:
    return next(
        (
            log
            for log in dev.logs()
            if log.get("client_request_id") == client_id and log.get("message") == "request finished"
        ),
        None,
    )

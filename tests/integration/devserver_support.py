"""Run `python -m llm_relay_dev.devserver` (what `make dev` runs) as a subprocess and collect its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.servers import free_port, wait_healthy
from tests.waiting import PATIENCE_S, wait_until


@dataclass
class DevServer:
    url: str
    key: str
    moto_url: str  # its own moto, or the RELAY_DYNAMODB_ENDPOINT it was given
    env: dict[str, str]
    pid: int
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def emf(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.stdout) if line.startswith('{"_aws"')]

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.stdout):
            if line.startswith("{") and not line.startswith('{"_aws"'):
                out.append(json.loads(line))
        return out

    def wait_for_output(self, needle: str, timeout: float = PATIENCE_S) -> str:
        """The first stdout line containing `needle`, once the server printed it."""
        return wait_until(
            lambda: next((line for line in list(self.stdout) if needle in line), None), f"{needle!r} printed", timeout
        )

    def wait_finished(self, request_id: str) -> dict[str, Any]:
        """The `request finished` log line of an admitted request, once every line of its finalization is out:
        the dev echo (`[relay] <id> ...`) is the last finalizer, after the log line and the request's EMF."""
        self.wait_for_output(f"[relay] {request_id} ")
        return next(
            log
            for log in self.logs()
            if log.get("request_id") == request_id and log.get("message") == "request finished"
        )


def _pump(stream: Any, sink: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line.rstrip("\n"))


def dev_server(**env: str) -> AbstractContextManager[DevServer]:
    """`make dev` on free ports; `env` overrides (e.g. RELAY_DYNAMODB_ENDPOINT: use that, start no moto). It logs
    the JSON lines and EMF the tests read, unless `env` names another RELAY_DEV_LOG."""
    return _dev_server(env, console=False)


def default_console_dev_server(**env: str) -> AbstractContextManager[DevServer]:
    """`make dev` as a user starts it: no RELAY_DEV_LOG at all, so the console a person reads."""
    return _dev_server(env, console=True)


@contextmanager
def _dev_server(env: dict[str, str], *, console: bool) -> Iterator[DevServer]:
    port, moto_port = free_port(), free_port()
    dropped = ("RELAY_DYNAMODB_ENDPOINT", "RELAY_UPSTREAM_URL", "RELAY_UPSTREAMS", "RELAY_DEV_LOG")
    inherited = {k: v for k, v in os.environ.items() if k not in dropped}
    log = {} if console else {"RELAY_DEV_LOG": env.pop("RELAY_DEV_LOG", "json")}
    full_env = {
        **inherited,
        "PORT": str(port),
        "RELAY_MOTO_PORT": str(moto_port),
        "RELAY_DEV_KEY": env.pop("RELAY_DEV_KEY", "lr-dev-test-key"),
        **log,
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_relay_dev.devserver"],
        env=full_env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    dynamodb = full_env.get("RELAY_DYNAMODB_ENDPOINT") or f"http://127.0.0.1:{moto_port}"
    server = DevServer(f"http://127.0.0.1:{port}", full_env["RELAY_DEV_KEY"], dynamodb, full_env, proc.pid)
    threads = [
        threading.Thread(target=_pump, args=(proc.stdout, server.stdout), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, server.stderr), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        try:
            wait_healthy(server.url, alive=lambda: proc.poll() is None)
        except AssertionError as exc:
            raise AssertionError("dev server did not start:\n" + "\n".join(server.stderr)) from exc
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for thread in threads:
            thread.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

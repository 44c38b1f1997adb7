"""The local DynamoDB in its own process (`python -m llm_relay_dev.local_dynamodb`, what `make dynamodb` runs), so
tests can freeze it (SIGSTOP) and thaw it (SIGCONT); relays as processes (`make dev`'s entry point) on it; and the
CLI's `reconcile`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from llm_relay.dynamo import Stores, make_client
from llm_relay.keys import ApiKey, generate_key, generate_key_id, hash_key
from llm_relay_dev.local_dynamodb import READY
from tests.servers import free_port
from tests.waiting import wait_until

TABLE = "llm-relay"


@dataclass
class LocalDynamo:
    endpoint: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stores(self) -> Stores:
        return Stores.create(TABLE, make_client(self.endpoint))


@contextmanager
def local_dynamodb() -> Iterator[LocalDynamo]:
    """`make dynamodb` on a free port, with the relay table; stopped (and thawed first) at the end."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_relay_dev.local_dynamodb", "-p", str(port), "--table", TABLE],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    dynamo = LocalDynamo(f"http://127.0.0.1:{port}", process)

    def pump() -> None:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, ""):
            dynamo.output.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(READY in line for line in dynamo.output), "the local DynamoDB ready")
        yield dynamo
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(timeout=10)
        reader.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def new_key(stores: Stores, **limits: int | str) -> tuple[str, ApiKey]:
    plain = generate_key()
    key = ApiKey(key_id=generate_key_id(), name="ledger-test", limits={k: Decimal(str(v)) for k, v in limits.items()})
    stores.keys.put(key, hash_key(plain))
    return plain, key


def relay_env(dynamo: LocalDynamo, upstream_url: str, **settings: str) -> dict[str, str]:
    """The environment of a relay process (`dev_server`) on this local DynamoDB and upstream."""
    return {
        "RELAY_DYNAMODB_ENDPOINT": dynamo.endpoint,
        "RELAY_TABLE_NAME": TABLE,
        "RELAY_UPSTREAM_URL": upstream_url,
        **settings,
    }


def reconcile_cli(endpoint: str, table: str = TABLE) -> dict[str, Any]:
    """`llm-relay reconcile --json` in its own process, as an operator runs it."""
    env = {**os.environ, "RELAY_DYNAMODB_ENDPOINT": endpoint, "RELAY_TABLE_NAME": table}
    done = subprocess.run(
        [sys.executable, "-m", "llm_relay.cli", "reconcile", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result

"""`make dynamodb` (`python -m llm_relay_dev.local_dynamodb`): the local DynamoDB in a process of its own, the
table built from template.yaml, shared by the CLI, relays and `make dev` (which then starts no moto itself)."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psutil
import pytest

from llm_relay.app import create_app
from llm_relay.dynamo import KeyStore, make_client
from llm_relay.keys import hash_key
from llm_relay.settings import Settings
from llm_relay_dev.local_dynamodb import READY
from llm_relay_dev.table import TABLE_RESOURCE, load_template
from tests.conftest import Upstream
from tests.integration.devserver_support import dev_server
from tests.integration.helpers import chat_body
from tests.servers import free_port, serve

CLI = os.path.join(os.path.dirname(sys.executable), "llm-relay")
SHORT = {"tokens": 3, "chunk_delay_ms": 0, "ttft_ms": 0}


@dataclass
class LocalDynamoDB:
    endpoint: str
    table: str
    ready_line: str

    def env(self, table: str | None = None) -> dict[str, str]:
        return {**os.environ, "RELAY_DYNAMODB_ENDPOINT": self.endpoint, "RELAY_TABLE_NAME": table or self.table}


def _ready_line(proc: subprocess.Popen[str], timeout_s: float = 30) -> str:
    """The server's first line, read by a thread: the test waits for that event, with a deadline."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
    try:
        return lines.get(timeout=timeout_s).rstrip("\n")
    except queue.Empty:
        raise AssertionError("the local DynamoDB printed nothing") from None


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)


@pytest.fixture
def local_dynamodb() -> Iterator[LocalDynamoDB]:
    """What `make dynamodb` runs, on a free port; stopped with SIGTERM (as Ctrl-C or a supervisor would)."""
    port, table = free_port(), f"shared-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_relay_dev.local_dynamodb", "--port", str(port), "--table", table],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _ready_line(proc)
        yield LocalDynamoDB(f"http://127.0.0.1:{port}", table, line)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr


def test_it_serves_the_template_table_and_says_where(local_dynamodb: LocalDynamoDB) -> None:
    # GIVEN `make dynamodb` running
    # THEN its ready line names the endpoint and the table
    assert local_dynamodb.ready_line.startswith(READY)
    assert local_dynamodb.endpoint in local_dynamodb.ready_line and local_dynamodb.table in local_dynamodb.ready_line
    # AND the table is already there, with template.yaml's key schema
    table = make_client(local_dynamodb.endpoint, "us-east-1").describe_table(TableName=local_dynamodb.table)["Table"]
    declared = load_template()["Resources"][TABLE_RESOURCE]["Properties"]["KeySchema"]
    assert table["KeySchema"] == declared


def test_the_cli_and_a_relay_share_it(local_dynamodb: LocalDynamoDB, upstream: Upstream) -> None:
    # GIVEN a key created by the CLI in the local DynamoDB
    created = subprocess.run(
        [CLI, "keys", "create", "--name", "shared", "--json"],
        env=local_dynamodb.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert created.returncode == 0, created.stderr
    plain = json.loads(created.stdout)["key"]
    # WHEN a relay pointed at the same endpoint is called with it
    settings = Settings(
        upstream_url=upstream.url, dynamodb_endpoint=local_dynamodb.endpoint, table_name=local_dynamodb.table
    )
    with serve(create_app(settings)) as base:
        response = httpx.post(
            f"{base}/v1/chat/completions",
            json=chat_body(mock=SHORT),
            headers={"authorization": f"Bearer {plain}"},
            timeout=10,
        )
    # THEN the relay knows the key and answers
    assert response.status_code == 200, response.text


def test_make_dev_uses_the_given_endpoint_and_starts_no_moto(local_dynamodb: LocalDynamoDB) -> None:
    # GIVEN `make dev` told to use the local DynamoDB, with a table name that is not there yet
    table = f"dev-{uuid.uuid4().hex[:8]}"
    with dev_server(RELAY_DYNAMODB_ENDPOINT=local_dynamodb.endpoint, RELAY_TABLE_NAME=table) as dev:
        # THEN it says it uses that endpoint
        dev.wait_for_output("DynamoDB")
        line = next(line for line in dev.stdout if line.strip().startswith("DynamoDB"))
        assert local_dynamodb.endpoint in line and "RELAY_DYNAMODB_ENDPOINT" in line and table in line
        # AND its dev key is in that DynamoDB, in the table it created there
        keys = KeyStore(table, make_client(local_dynamodb.endpoint, "us-east-1"))
        assert keys.get_by_hash(hash_key(dev.key)) is not None
        # AND it listens only as the relay and its upstreams (the mock, the local Bedrock): no moto of its own
        listening = {c.laddr.port for c in psutil.Process(dev.pid).net_connections("tcp") if c.status == "LISTEN"}
        assert int(dev.url.rsplit(":", 1)[1]) in listening and len(listening) == 3
        assert not _listens(int(dev.env["RELAY_MOTO_PORT"]))
        # AND it serves
        response = httpx.post(
            f"{dev.url}/v1/chat/completions",
            json=chat_body(mock=SHORT),
            headers={"authorization": f"Bearer {dev.key}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_it_has_the_moto_fixes_of_the_in_process_server(local_dynamodb: LocalDynamoDB) -> None:
    # GIVEN the standalone server (the same serialized, patched moto the tests' in-process server is)
    from decimal import Decimal

    from llm_relay.dynamo.layout import deserialize, serialize

    client = make_client(local_dynamodb.endpoint, "us-east-1")
    key = serialize({"pk": "K", "sk": "S"})
    # WHEN a cost in exponent notation is added twice (stock moto refuses `9E-7`)
    for _ in range(2):
        client.update_item(
            TableName=local_dynamodb.table,
            Key=key,
            UpdateExpression="ADD cost :c",
            ExpressionAttributeValues=serialize({":c": Decimal("9E-7")}),
        )
    # THEN the sum is exact, as DynamoDB would store it
    item = deserialize(client.get_item(TableName=local_dynamodb.table, Key=key)["Item"])
    assert item["cost"] == Decimal("0.0000018")

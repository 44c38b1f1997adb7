"""`create_table` on a local DynamoDB holding more tables than one `ListTables` page (100): an existing table is
found, not created twice (`make dev` against a shared `make dynamodb`, the test session's moto)."""

from __future__ import annotations

import uuid

from llm_relay.dynamo import make_client
from llm_relay_dev.table import create_table


def test_an_existing_table_is_found_beyond_the_first_page(moto_endpoint: str) -> None:
    client = make_client(moto_endpoint)
    prefix = f"page-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{n:03d}" for n in range(101)]
    for name in names:
        create_table(client, name)
    # WHEN the last one is created again: THEN nothing happens (no ResourceInUseException)
    create_table(client, names[-1])
    assert client.describe_table(TableName=names[-1])["Table"]["TableStatus"] == "ACTIVE"

"""`create_table` is idempotent however many tables the endpoint holds (list_tables names 100 a page)."""

from __future__ import annotations

import uuid

from llm_relay.dynamo import make_client
from llm_relay_dev.table import create_table, load_template


def test_create_table_twice_among_more_than_100_tables(moto_endpoint: str) -> None:
    # GIVEN more than 100 tables on the endpoint (a test session's moto holds that many)
    client = make_client(moto_endpoint)
    template = load_template()
    names = [f"many-{uuid.uuid4().hex[:8]}-{i:03}" for i in range(101)]
    for name in names:
        create_table(client, name, template)
    # WHEN the last is created again (the dev server on a shared endpoint does so at every start)
    create_table(client, names[-1], template)
    # THEN nothing fails, and it is still there
    assert client.describe_table(TableName=names[-1])["Table"]["TableStatus"] == "ACTIVE"

"""Cancel calls are bounded per key, by a burst and a rate from the key's own limits: past them a call is answered
429 and writes nothing to DynamoDB. Through a real relay on loopback and moto."""

from __future__ import annotations

import time
from collections import Counter

import httpx

from llm_relay.dynamo import Stores
from llm_relay.dynamo.layout import serialize
from llm_relay.limits.rules import Limits, cancel_allowance
from tests.conftest import Relay
from tests.integration.test_limits_relay import new_key


def _cancel_items(stores: Stores, key_id: str) -> int:
    """The pending cancel marks written for the key's client ids (the items a cancel by client id creates)."""
    client = stores.client
    count = 0
    pages = client.get_paginator("scan").paginate(
        TableName=stores.table_name,
        FilterExpression="begins_with(pk, :prefix)",
        ExpressionAttributeValues=serialize({":prefix": f"CCANCEL#{key_id}#"}),
        ConsistentRead=True,
    )
    for page in pages:
        count += len(page.get("Items", []))
    return count


def test_200_cancel_calls_of_a_key_limited_to_1_request_a_minute_write_at_most_its_burst(relay: Relay) -> None:
    # GIVEN a key limited to 1 request a minute (its cancel allowance: a small burst, 2 a minute)
    plain, key = new_key(relay.stores, rpm=1)
    allowance = cancel_allowance(Limits(rpm=1))
    # WHEN it sends 200 cancel calls, each for a client id of its own (each would write a pending mark)
    answers: Counter[int] = Counter()
    refused: list[httpx.Response] = []
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        for n in range(200):
            response = client.post(f"{relay.url}/v1/requests/flood-{n}/cancel", headers=relay.headers(plain))
            answers[response.status_code] += 1
            if response.status_code == 429:
                refused.append(response)
    refills = int((time.monotonic() - started) * allowance.per_minute / 60)  # what the rate gave back meanwhile
    # THEN the burst is taken (202), and every call past it is answered 429 with the wait and the limit's name
    assert answers[202] <= allowance.burst + refills and answers[202] >= allowance.burst, answers
    assert answers[429] == 200 - answers[202], answers
    body = refused[0].json()["error"]
    assert body["code"] == "rate_limit_exceeded" and "cancel calls" in body["message"]
    assert 1 <= int(refused[0].headers["retry-after"]) <= 60 / allowance.per_minute + 1
    # AND DynamoDB holds no more cancel marks than the calls it took
    assert _cancel_items(relay.stores, key.key_id) == answers[202]


def test_a_key_s_cancel_calls_do_not_use_up_another_key_s(relay: Relay) -> None:
    # GIVEN one key that used up its cancel calls
    flooding, _ = new_key(relay.stores, rpm=1)
    other, _ = new_key(relay.stores, rpm=1)
    with httpx.Client(timeout=10) as client:
        statuses = [
            client.post(f"{relay.url}/v1/requests/flood-{n}/cancel", headers=relay.headers(flooding)).status_code
            for n in range(10)
        ]
        assert statuses[-1] == 429
        # WHEN another key cancels THEN it is taken
        answer = client.post(f"{relay.url}/v1/requests/mine/cancel", headers=relay.headers(other))
    assert answer.status_code == 202 and answer.json()["status"] == "pending"

"""A generic `ndjson` upstream that counts its output but not its prompt, through a real relay: the record estimates
the prompt like any missing count and says it is estimated, instead of billing it as 0 tokens."""

from __future__ import annotations

import json

import httpx

from llm_relay.dynamo import Stores
from llm_relay.metering import estimate_prompt_tokens
from tests.conftest import RelayFactory, Upstream
from tests.integration.helpers import chat_body, ndjson_lines
from tests.integration.test_limits_relay import new_key, records_of


def test_an_ndjson_upstream_without_a_prompt_count_gets_an_estimated_prompt(
    make_relay: RelayFactory, stores: Stores, upstream: Upstream
) -> None:
    # GIVEN an ndjson upstream whose lines carry no prompt count where the relay looks for one (the mock streams this
    # relay's own NDJSON; its prompt count is read from a field it does not have)
    mock_root = upstream.url.removesuffix("/v1")
    table = [
        {
            "name": "inhouse",
            "kind": "ndjson",
            "url": f"{mock_root}/ndjson/chat",
            "models": ["gpt-*"],
            "fields": {"prompt_tokens": "usage.input_tokens"},
        }
    ]
    relay = make_relay(upstream_url=None, upstreams=json.dumps(table))
    plain, key = new_key(stores)
    body = chat_body(mock={"tokens": 7, "chunk_delay_ms": 0, "ttft_ms": 0})
    # WHEN a request streams to its end
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{relay.url}/api/v1/chat/stream", json=body, headers=relay.headers(plain))
    assert response.status_code == 200
    # THEN the record bills the upstream's output count and an estimated prompt, and says it is estimated
    (record,) = records_of(stores, key.key_id, 1)
    expected_prompt = estimate_prompt_tokens(body["messages"])
    assert (record.termination_reason, record.completion_tokens) == ("stop", 7)
    assert (record.prompt_tokens, record.usage_source) == (expected_prompt, "estimated")
    assert expected_prompt > 0 and record.cost_usd is not None and record.cost_usd > 0
    # AND so does the summary the client got
    usage = ndjson_lines(response.text)[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["estimated"]) == (expected_prompt, 7, True)

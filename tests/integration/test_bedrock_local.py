"""The local Bedrock server on loopback: botocore's own `bedrock-runtime` client reads its event stream (so the
framing and the signing check are real), every fault shows, and the relay's Bedrock dialect — a request signed by
botocore, sent by httpx, decoded by `BedrockDecoder` — streams the mock's words with a finish and usage."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import boto3.session
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from llm_relay.upstreams.base import END, Failed
from llm_relay.upstreams.bedrock import BedrockDialect
from llm_relay_dev.bedrock_local import create_bedrock_app
from llm_relay_dev.mock_upstream import WORDS
from tests.servers import serve
from tests.waiting import wait_until

MODEL = "us.anthropic.claude-3-5-haiku-20241022-v1:0"


@pytest.fixture(scope="module")
def bedrock_url() -> Iterator[str]:
    with serve(create_bedrock_app()) as base:
        yield base


@pytest.fixture(autouse=True)
def _static_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


class _Converse:
    """botocore's `bedrock-runtime` clients against the local server, closed when the test ends."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.clients: list[Any] = []
        self.streams: list[Any] = []

    def __call__(self, opts: dict[str, Any] | None = None, attempts: int = 1) -> Any:
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
        config = Config(retries={"total_max_attempts": attempts, "mode": "standard"}, read_timeout=5)
        client = session.client("bedrock-runtime", region_name="us-east-1", endpoint_url=self.base, config=config)
        self.clients.append(client)
        system = [{"text": "mock: " + json.dumps(opts)}] if opts else [{"text": "Be brief."}]
        messages = [{"role": "user", "content": [{"text": "Tell me about foxes."}]}]
        response = client.converse_stream(modelId=MODEL, system=system, messages=messages)
        self.streams.append(response["stream"])
        return response

    def close(self) -> None:
        for stream in self.streams:
            stream.close()  # a stream botocore stopped reading keeps its connection checked out
        for client in self.clients:
            client.close()


@pytest.fixture
def converse(bedrock_url: str) -> Iterator[_Converse]:
    calls = _Converse(bedrock_url)
    yield calls
    calls.close()


def _events(response: Any) -> list[str]:
    return [name for event in response["stream"] for name in event]


# --- botocore's client against the local server --------------------------------------------------------------


def test_botocore_streams_the_events_of_a_signed_request(converse: _Converse) -> None:
    # GIVEN botocore's client pointed at the local server WHEN it streams a ConverseStream answer
    response = converse({"tokens": 4, "ttft_ms": 0, "chunk_delay_ms": 0})
    events = list(response["stream"])
    # THEN botocore parsed every event of the framing: the words, the stop, the usage
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/vnd.amazon.eventstream"
    assert [next(iter(e)) for e in events] == ["messageStart"] + ["contentBlockDelta"] * 4 + [
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events[1:5]) == "".join(WORDS[:4])
    assert events[6]["messageStop"]["stopReason"] == "end_turn"
    assert events[7]["metadata"]["usage"] == {"inputTokens": 5, "outputTokens": 4, "totalTokens": 9}


def test_an_unsigned_request_is_refused(bedrock_url: str) -> None:
    response = httpx.post(f"{bedrock_url}/model/{MODEL}/converse-stream", json={"messages": []})
    assert response.status_code == 403
    signed_elsewhere = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, Signature=x"
    response = httpx.post(
        f"{bedrock_url}/model/m/converse-stream", json={}, headers={"Authorization": signed_elsewhere}
    )
    assert response.status_code == 403


def test_throttling_before_the_first_event(converse: _Converse) -> None:
    with pytest.raises(ClientError) as throttled:
        converse({"throttle": True})
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def test_fail_first_throttles_only_the_first_attempts(converse: _Converse) -> None:
    # GIVEN a request throttled on its first attempt WHEN botocore may retry once THEN the retry streams
    response = converse({"fail_first": 1, "id": "ff-1", "tokens": 2, "ttft_ms": 0}, attempts=2)
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert _events(response)[-1] == "metadata"


def test_a_status_is_a_bedrock_style_error(converse: _Converse) -> None:
    with pytest.raises(ClientError) as refused:
        converse({"status": 400})
    assert refused.value.response["Error"] == {"Message": "mock: status 400", "Code": "ValidationException"}


def test_an_exception_event_mid_stream(converse: _Converse) -> None:
    response = converse({"tokens": 5, "exception_after": 2, "ttft_ms": 0})
    seen: list[str] = []
    with pytest.raises(EventStreamError, match="modelStreamErrorException"):
        for event in response["stream"]:
            seen.extend(event)
    assert seen == ["messageStart", "contentBlockDelta", "contentBlockDelta"]


def test_a_stream_cut_before_message_stop_and_one_without_metadata(converse: _Converse) -> None:
    cut = _events(converse({"tokens": 2, "cut_before_stop": True, "ttft_ms": 0}))
    assert "messageStop" not in cut and "metadata" not in cut and cut[-1] == "contentBlockStop"
    no_metadata = _events(converse({"tokens": 2, "no_metadata": True, "ttft_ms": 0}))
    assert no_metadata[-1] == "messageStop"


def test_a_tool_call(converse: _Converse) -> None:
    events = list(converse({"tokens": 1, "tool_call": "weather", "ttft_ms": 0})["stream"])
    starts = [e["contentBlockStart"]["start"]["toolUse"] for e in events if "contentBlockStart" in e]
    assert starts == [{"toolUseId": "tooluse_mock", "name": "weather"}]
    assert events[-2] == {"messageStop": {"stopReason": "tool_use"}}


# --- the relay's dialect: botocore signs, httpx sends, BedrockDecoder reads ----------------------------------


async def _relay(base: str, opts: dict[str, Any], request_id: str, stop_after: int | None = None) -> list[Any]:
    body = {
        "model": "client",
        "messages": [{"role": "system", "content": "mock: " + json.dumps(opts)}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
        "max_tokens": 50,
    }
    dialect = BedrockDialect("us-east-1", endpoint_url=base)
    request = await dialect.request(body, MODEL, request_id)
    decoder = dialect.decoder(MODEL, 1700)
    out: list[Any] = []
    async with (
        httpx.AsyncClient(timeout=5) as client,
        client.stream("POST", request.url, headers=request.headers, content=request.content) as response,
    ):
        assert response.status_code == 200, await response.aread()
        async for raw in response.aiter_raw():
            out.extend(decoder.feed(raw))
            if stop_after is not None and len(out) >= stop_after:
                return out  # leaving the block closes the connection: the client's cancel
    return out + decoder.close()


def _record(base: str, request_id: str) -> dict[str, Any]:
    record: dict[str, Any] = httpx.get(f"{base}/mock/requests/{request_id}").json()
    return record


def test_the_dialect_streams_the_words_a_finish_and_usage(bedrock_url: str) -> None:
    # WHEN the relay's dialect builds the request and httpx streams it through the decoder
    out = anyio.run(_relay, bedrock_url, {"tokens": 12, "ttft_ms": 5, "chunk_delay_ms": 1}, "dialect-1")
    # THEN the chunks carry the words, then a finish, the upstream's usage and the end marker
    chunks = [item for item in out if isinstance(item, dict)]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "".join(WORDS[i % len(WORDS)] for i in range(12))
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 12 and chunks[-1]["usage"]["prompt_tokens"] >= 1
    assert out[-1] is END
    # AND the server saw one complete request under the relay's request id
    record = _record(bedrock_url, "dialect-1")
    assert record["completed"] is True and record["chunks_sent"] == 12 and record["disconnected_at"] is None


def test_the_dialect_reports_an_exception_mid_stream(bedrock_url: str) -> None:
    out = anyio.run(_relay, bedrock_url, {"tokens": 5, "exception_after": 3, "ttft_ms": 0}, "dialect-2")
    assert out[-1] == Failed("Upstream error: modelStreamErrorException: mock: the model stream failed")
    assert len(out) == 1 + 3 + 1


def test_the_dialect_on_a_cut_stream_has_no_finish_and_no_end(bedrock_url: str) -> None:
    out = anyio.run(_relay, bedrock_url, {"tokens": 3, "cut_before_stop": True, "ttft_ms": 0}, "dialect-3")
    assert END not in out and all(c["choices"][0]["finish_reason"] is None for c in out)


def test_closing_the_stream_is_seen_by_the_server(bedrock_url: str) -> None:
    # GIVEN a long, slow answer WHEN the client leaves after the first chunks
    opts = {"tokens": 200, "ttft_ms": 0, "chunk_delay_ms": 20}
    anyio.run(_relay, bedrock_url, opts, "dialect-4", 3)
    # THEN the server notices the disconnect (waiting for the event, not for a fixed time)
    deadline = time.monotonic() + 10
    while _record(bedrock_url, "dialect-4")["disconnected_at"] is None:
        assert time.monotonic() < deadline, "the server never saw the disconnect"
        time.sleep(0.02)
    assert _record(bedrock_url, "dialect-4")["completed"] is False


def test_drop_after_aborts_the_connection(bedrock_url: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        anyio.run(_relay, bedrock_url, {"tokens": 10, "drop_after": 2, "ttft_ms": 0}, "dialect-5")


def test_stall_after_stops_sending_and_headers_delay_holds_the_headers(bedrock_url: str) -> None:
    def sent(request_id: str) -> int:
        record = httpx.get(f"{bedrock_url}/mock/requests/{request_id}").json()
        return int(record.get("chunks_sent") or 0)

    async def read_until_stalled() -> int:
        # a stream that stalls after two chunks: wait for those two (never for a time), then stop reading
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                _relay, bedrock_url, {"tokens": 10, "stall_after": 2, "ttft_ms": 0, "chunk_delay_ms": 0}, "stall"
            )
            await anyio.to_thread.run_sync(wait_until, lambda: sent("stall") >= 2, "two chunks sent")
            tg.cancel_scope.cancel()
        return await anyio.to_thread.run_sync(sent, "stall")

    assert anyio.run(read_until_stalled) == 2  # and no more: the server stalled after them
    started = time.monotonic()
    anyio.run(_relay, bedrock_url, {"tokens": 1, "ttft_ms": 0, "headers_delay_ms": 300}, "held")
    assert time.monotonic() - started >= 0.3

"""`make dev` as a new user finds it (its console mode, its printed key, its upstreams of every kind), spoken to with
the official SDKs in each API: OpenAI's Responses, Anthropic's Messages, embeddings and the model list."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.integration.devserver_support import DevServer, dev_server

MODELS = ["llama3.2", "inhouse-1", "amazon.nova-lite-v1:0", "gpt-4o-mini"]
MOCK = 'mock: {"tokens": 4, "chunk_delay_ms": 1}'
WORDS = "The quick brown fox"


@pytest.fixture(scope="module")
def dev() -> Iterator[DevServer]:
    with dev_server() as server:
        server.wait_for_output("upstreams (mock upstream and local Bedrock in this process):")
        yield server


@pytest.mark.parametrize("model", MODELS)
def test_make_dev_answers_the_responses_and_messages_apis_from_every_kind(dev: DevServer, model: str) -> None:
    # GIVEN the key `make dev` printed, in both SDKs
    with (
        openai.OpenAI(base_url=f"{dev.url}/v1", api_key=dev.key, max_retries=0) as oai,
        anthropic.Anthropic(base_url=dev.url, api_key=dev.key, max_retries=0) as claude,
    ):
        # WHEN each streams the model in its own API
        with oai.responses.stream(model=model, instructions=MOCK, input="Hello") as responses:
            response = responses.get_final_response()
        with claude.messages.stream(
            model=model, max_tokens=64, system=MOCK, messages=[{"role": "user", "content": "Hello"}]
        ) as messages:
            text = "".join(messages.text_stream)
            message = messages.get_final_message()
    # THEN both read the mock's words, with its counts
    assert response.output_text == WORDS == text
    assert response.usage is not None and response.usage.output_tokens == 4
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 4
    # AND the console's line for each names the request
    assert dev.wait_finished(response.id)["reason"] == "stop"


def test_make_dev_embeds_and_lists_its_routed_models(dev: DevServer) -> None:
    with openai.OpenAI(base_url=f"{dev.url}/v1", api_key=dev.key, max_retries=0) as client:
        vectors = client.embeddings.create(model="text-embedding-3-small", input=["Hello", "there"])
        local = client.embeddings.create(model="llama3.2", input="Hello")
        ids = {model.id for model in client.models.list()}
    assert len(vectors.data) == 2 and vectors.usage.prompt_tokens > 0
    assert len(local.data) == 1 and len(local.data[0].embedding) == 8
    assert {"llama3.2", "inhouse-1", "amazon.nova-lite-v1:0", "gpt-4o-mini", "text-embedding-3-small"} <= ids

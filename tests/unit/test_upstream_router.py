"""Fallbacks (`Upstreams.open`): taken when an upstream fails before any byte could reach a model, after its own
retries; never after a 4xx or once the request may have reached a model. Against `httpx.MockTransport`."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from llm_relay.errors import InvalidRequest, ModelNotAllowed, UpstreamError
from llm_relay.settings import Settings
from llm_relay.upstreams.base import UpstreamRequest
from llm_relay.upstreams.http import OpenedStream
from llm_relay.upstreams.openai import OpenAIDialect
from llm_relay.upstreams.router import Upstreams, dialect_for
from llm_relay.upstreams.table import UpstreamSpec, load_table

TABLE = [
    {"name": "primary", "kind": "openai", "url": "http://primary/v1", "models": ["gpt-*"], "fallbacks": ["second"]},
    {"name": "second", "kind": "openai", "url": "http://second/v1", "models": ["other"], "rewrite": "second-model"},
    {"name": "a", "kind": "openai", "url": "http://a/v1", "models": ["three-*"], "fallbacks": ["b", "c"]},
    {"name": "b", "kind": "openai", "url": "http://b/v1", "models": ["-b"]},
    {"name": "c", "kind": "openai", "url": "http://c/v1", "models": ["-c"]},
]
BODY = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "stream": True}
SSE_OK = b'data: {"choices":[]}\n\ndata: [DONE]\n\n'


class Hosts:
    """Answers each host from its own script (a status, or an httpx exception class); 200 when it runs out."""

    def __init__(self, **scripts: list[Any]) -> None:
        self.scripts = scripts
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.seen.append((host, json.loads(request.content)))
        script = self.scripts.get(host, [])
        step = script.pop(0) if script else 200
        if isinstance(step, type):
            raise step("scripted", request=request)
        if step == 200:
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=SSE_OK)
        return httpx.Response(step, json={"error": {"message": f"scripted {step}"}})


def _open(
    hosts: Hosts, *, model: str = "gpt-x", factory: Any = None, retries: int = 1, retry_ambiguous: bool = False
) -> OpenedStream:
    settings = Settings(
        upstream_retry_base_s=0.001,
        upstream_retry_max_s=0.002,
        upstream_max_retries=retries,
        retry_ambiguous=retry_ambiguous,
    )

    async def run() -> OpenedStream:
        upstreams = Upstreams(
            settings,
            load_table(json.dumps(TABLE), None, {}),
            transport=httpx.MockTransport(hosts),
            dialect_factory=factory,
        )
        try:
            plan = await upstreams.plan({**BODY, "model": model}, model, "req_1")
            opened = await upstreams.open(plan)
            await opened.response.aclose()
            return opened
        finally:
            await upstreams.aclose()

    return anyio.run(run)


def test_a_healthy_primary_answers_and_the_fallback_is_never_asked() -> None:
    hosts = Hosts()
    opened = _open(hosts)
    assert opened.upstream == "primary" and opened.retries == 0
    assert [host for host, _ in hosts.seen] == ["primary"]


@pytest.mark.parametrize("failure", [503, 429, 500, httpx.ConnectError])
def test_a_primary_failing_before_any_byte_falls_back_after_its_retries(failure: Any) -> None:
    # GIVEN a primary that fails every attempt in a way no model can have seen, with 1 retry
    hosts = Hosts(primary=[failure, failure])
    # WHEN a request for its model opens
    opened = _open(hosts)
    # THEN the fallback answered, with its own model name, and the record counts every attempt
    assert opened.upstream == "second"
    assert [host for host, _ in hosts.seen] == ["primary", "primary", "second"]
    assert hosts.seen[-1][1]["model"] == "second-model"
    assert opened.retries == 2
    assert sum(opened.status_errors.values()) == 2


@pytest.mark.parametrize(
    "failure", [400, 401, 404, 408, 504, httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError]
)
def test_no_fallback_after_a_4xx_or_once_the_request_may_have_reached_a_model(failure: Any) -> None:
    # 408 and 504: a model may have timed out generating; RemoteProtocolError: the server closed without answering,
    # possibly after the whole request was sent (retried on the same upstream, a stale keep-alive, never elsewhere)
    hosts = Hosts(primary=[failure, failure])
    with pytest.raises(UpstreamError) as failed:
        _open(hosts)
    assert {host for host, _ in hosts.seen} == {"primary"}
    assert failed.value.upstream == "primary"


def test_when_every_upstream_fails_the_last_failure_carries_the_whole_history() -> None:
    hosts = Hosts(primary=[503, 503], second=[502, 502])
    with pytest.raises(UpstreamError) as failed:
        _open(hosts)
    assert failed.value.upstream == "second"
    assert (failed.value.retries, failed.value.failures) == (3, {"5xx": 4})


def test_a_fallback_that_cannot_take_the_request_leaves_the_primarys_failure() -> None:
    class Refusing(OpenAIDialect):
        async def request(self, body: dict[str, Any], model: str, request_id: str) -> UpstreamRequest:
            raise InvalidRequest("'n' is not supported by this upstream", param="n")

    def factory(spec: UpstreamSpec) -> Any:
        return Refusing(spec.url or "") if spec.name == "second" else dialect_for(spec, None)

    hosts = Hosts(primary=[503, 503])
    with pytest.raises(UpstreamError) as failed:
        _open(hosts, factory=factory)
    assert failed.value.upstream == "primary" and failed.value.upstream_status == 503
    assert [host for host, _ in hosts.seen] == ["primary", "primary"]


def test_a_request_the_primary_cannot_take_is_refused_when_planned() -> None:
    class Refusing(OpenAIDialect):
        async def request(self, body: dict[str, Any], model: str, request_id: str) -> UpstreamRequest:
            raise InvalidRequest("'n' is not supported by this upstream", param="n")

    hosts = Hosts()
    with pytest.raises(InvalidRequest):
        _open(hosts, factory=lambda spec: Refusing(spec.url or ""))
    assert hosts.seen == []


def test_a_model_no_upstream_serves_is_refused_before_any_request() -> None:
    hosts = Hosts()
    with pytest.raises(ModelNotAllowed):
        _open(hosts, model="llama3")
    assert hosts.seen == []


def test_a_fallback_that_cannot_take_the_request_is_skipped_for_the_next() -> None:
    class Refusing(OpenAIDialect):
        async def request(self, body: dict[str, Any], model: str, request_id: str) -> UpstreamRequest:
            raise InvalidRequest("'n' is not supported by this upstream", param="n")

    def factory(spec: UpstreamSpec) -> Any:
        return Refusing(spec.url or "") if spec.name == "b" else dialect_for(spec, None)

    # GIVEN a primary that is down, a first fallback that cannot take the request, and a second one that can
    hosts = Hosts(a=[503, 503])
    opened = _open(hosts, model="three-x", factory=factory)
    # THEN the second fallback answered; the skipped one sent nothing and is not counted as an attempt
    assert opened.upstream == "c"
    assert [host for host, _ in hosts.seen] == ["a", "a", "c"]
    assert opened.retries == 2


def test_chunks_name_the_clients_model_not_the_rewrite() -> None:
    decoded_as: list[str] = []

    class Recording(OpenAIDialect):
        def decoder(self, model: str, created: int) -> Any:
            decoded_as.append(model)
            return super().decoder(model, created)

    # GIVEN a fallback that rewrites the model name it sends
    hosts = Hosts(primary=[503, 503])
    opened = _open(hosts, factory=lambda spec: Recording(spec.url or ""))
    # THEN it was asked for its own name, and the chunks it produces are named as the client asked
    assert opened.upstream == "second" and hosts.seen[-1][1]["model"] == "second-model"
    assert decoded_as == ["gpt-x"]
    assert opened.renamed == "gpt-x"  # and the relay names the chunks the upstream names itself


def test_a_route_that_sends_the_clients_name_renames_nothing() -> None:
    assert _open(Hosts()).renamed == ""


def test_the_progress_of_an_open_stopped_between_attempts_is_kept() -> None:
    # GIVEN a primary failing with a 503 that asks for 30 s (the wait before the retry is at least that), and an
    # open cancelled while it waits to retry (as a cancel call or the deadline does)
    settings = Settings(upstream_retry_base_s=30, upstream_retry_max_s=30, upstream_max_retries=2)

    def unavailable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"retry-after": "30"}, json={"error": {"message": "busy"}})

    async def run() -> Any:
        transport = httpx.MockTransport(unavailable)
        upstreams = Upstreams(settings, load_table(json.dumps(TABLE), None, {}), transport=transport)
        plan = await upstreams.plan(BODY, "gpt-x", "req_1")
        async with anyio.create_task_group() as tg:
            tg.start_soon(upstreams.open, plan)
            await anyio.wait_all_tasks_blocked()  # the open waits out its 30 s backoff: nothing else to run
            tg.cancel_scope.cancel()
        await upstreams.aclose()
        return plan.progress

    progress = anyio.run(run)
    # THEN the plan still says what was tried: one attempt at the primary, failed with a 5xx
    assert (progress.attempts, progress.retries, progress.failures, progress.upstream) == (1, 0, {"5xx": 1}, "primary")


def test_each_route_is_billed_as_the_model_it_sends_when_that_has_a_price() -> None:
    # GIVEN a primary that sends the client's model and a fallback that sends its own, priced, name
    settings = Settings(upstream_retry_base_s=0.001, upstream_retry_max_s=0.002, upstream_max_retries=0)
    hosts = Hosts(primary=[503])

    async def run(priced: set[str]) -> tuple[Any, OpenedStream]:
        upstreams = Upstreams(
            settings,
            load_table(json.dumps(TABLE), None, {}),
            transport=httpx.MockTransport(hosts),
            priced=priced.__contains__,
        )
        plan = await upstreams.plan(BODY, "gpt-x", "req_1")
        opened = await upstreams.open(plan)
        await opened.response.aclose()
        await upstreams.aclose()
        return plan, opened

    # WHEN the fallback's own name has a price THEN it is billed as that, and the plan lists both for the budget
    plan, opened = anyio.run(run, {"gpt-x", "second-model"})
    assert plan.billed_as == ("gpt-x", "second-model") and opened.billed_as == "second-model"
    # AND a rewrite without a price is billed as the client's model
    hosts.scripts["primary"] = [503]
    plan, opened = anyio.run(run, {"gpt-x"})
    assert plan.billed_as == ("gpt-x", "gpt-x") and opened.billed_as == "gpt-x"


@pytest.mark.parametrize("first", [504, 408, httpx.RemoteProtocolError])
def test_no_fallback_once_any_attempt_may_have_reached_a_model(first: Any) -> None:
    # GIVEN a primary whose first attempt may have reached a model, retried (RELAY_RETRY_AMBIGUOUS), and whose retry
    # then fails before any could
    hosts = Hosts(primary=[first, 503])
    # THEN the open fails there: a fallback could generate the answer a second time
    with pytest.raises(UpstreamError) as failed:
        _open(hosts, retry_ambiguous=True)
    assert [host for host, _ in hosts.seen] == ["primary", "primary"] and failed.value.upstream == "primary"

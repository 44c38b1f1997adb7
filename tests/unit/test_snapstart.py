"""SnapStart: the after-restore hook the web adapter calls (`llm_relay.snapstart`) redoes what a snapshot
shares between restored environments, and only the adapter itself can call it."""

from __future__ import annotations

import random

import anyio
import httpx
import pytest

from llm_relay import snapstart
from llm_relay.app import create_app
from llm_relay.lambda_context import HEADER as LAMBDA_CONTEXT_HEADER
from llm_relay.settings import Settings
from llm_relay.upstreams.router import Upstreams
from llm_relay.upstreams.table import load_table


def _mock_transport() -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(500))


def _upstream() -> Upstreams:
    return Upstreams(Settings(), load_table(None, "http://upstream/v1"), transport=_mock_transport())


def test_after_restore_reseeds_randomness_and_drops_the_snapshotted_connection_pool() -> None:
    async def scenario() -> None:
        # GIVEN an upstream client built during init, and the random state as the snapshot holds it
        upstream = _upstream()
        snapshotted = upstream.exchange.client
        random.seed(12345)
        shared_draw = random.Random(12345).random()
        # WHEN the hook runs after a restore
        await snapstart.after_restore(upstream)
        # THEN the upstream has a new client and the snapshotted one (with its pool) is closed
        assert (
            upstream.exchange.client is not snapshotted
            and snapshotted.is_closed
            and not upstream.exchange.client.is_closed
        )
        # AND the module's random state no longer follows the snapshotted seed
        assert random.random() != shared_draw
        await upstream.aclose()

    anyio.run(scenario)


def test_after_restore_before_the_lifespan_has_nothing_to_renew() -> None:
    anyio.run(snapstart.after_restore, None)


def _app(monkeypatch: pytest.MonkeyPatch, path: str | None) -> httpx.AsyncClient:
    monkeypatch.delenv("RELAY_UPSTREAM_URL", raising=False)
    if path:
        monkeypatch.setenv("AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH", path)
    else:
        monkeypatch.delenv("AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH", raising=False)
    app = create_app(Settings(upstream_url="http://upstream/v1"), upstream_transport=_mock_transport())
    app.state.pipeline.upstreams = _upstream()
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay")


def test_the_adapter_call_runs_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        # GIVEN SnapStart on: the template sets the adapter's after-restore path
        async with _app(monkeypatch, snapstart.AFTER_RESTORE_PATH) as client:
            pipeline = client._transport.app.state.pipeline  # type: ignore[attr-defined]
            snapshotted = pipeline.upstreams.exchange.client
            # WHEN the adapter POSTs it after a restore (its own call: no Lambda context header)
            answer = await client.post(snapstart.AFTER_RESTORE_PATH)
            # THEN the hook ran: 204, and the upstream pool was renewed
            assert answer.status_code == 204
            assert pipeline.upstreams.exchange.client is not snapshotted and snapshotted.is_closed
            # AND a request forwarded from an invocation (it carries the Lambda context) cannot trigger it
            forwarded = await client.post(snapstart.AFTER_RESTORE_PATH, headers={LAMBDA_CONTEXT_HEADER: "{}"})
            assert forwarded.status_code == 404
            await pipeline.upstreams.aclose()

    anyio.run(scenario)


def test_without_snapstart_the_hook_route_does_not_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with _app(monkeypatch, None) as client:
            assert (await client.post(snapstart.AFTER_RESTORE_PATH)).status_code == 404
            await client._transport.app.state.pipeline.upstreams.aclose()  # type: ignore[attr-defined]

    anyio.run(scenario)


def test_no_openapi_schema_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        # GIVEN the app THEN it serves no schema and no docs (none is generated at start-up either)
        async with _app(monkeypatch, None) as client:
            for path in ("/openapi.json", "/docs", "/redoc"):
                assert (await client.get(path)).status_code == 404
            await client._transport.app.state.pipeline.upstreams.aclose()  # type: ignore[attr-defined]

    anyio.run(scenario)

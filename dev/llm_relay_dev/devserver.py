"""`make dev`: the relay on 127.0.0.1:$PORT with a local DynamoDB, a mock upstream, a dev key and
ready-to-paste curl lines.

DynamoDB: the endpoint in `RELAY_DYNAMODB_ENDPOINT` when set (a `make dynamodb` shared by several relays; the
table is created there if missing), else a serialized moto server started in this process. Upstream: the URL in
`RELAY_UPSTREAM_URL` when set, else the mock upstream served from a background thread of this process. The
production app has no such fallback: it refuses to start without an upstream URL.

`RELAY_DEV_LAMBDA=1` (`make dev LAMBDA=1`): the relay behind a local function-URL front (function_url.py): no
disconnect passed on, the invocation deadline from `RELAY_FUNCTION_TIMEOUT_S`, 6 MB request cap, 2 MB/s after
6 MB, one request per environment, up to `RELAY_DEV_LAMBDA_ENVIRONMENTS` (4) environments started on demand.

Prints one human line per finished request, the figures the CloudWatch dashboard would show.

Prints one human line per finished request, the figures the CloudWatch dashboard would show, and warnings;
`RELAY_DEV_LOG=json` adds the JSON log lines and EMF documents Lambda would print (`human_log`).
"""

from __future__ import annotations

import os
from contextlib import ExitStack

import uvicorn
from starlette.types import ASGIApp

from llm_relay.app import create_app
from llm_relay.dynamo import Stores
from llm_relay.outcome import RequestContext, StreamOutcome
from llm_relay.settings import Settings

from . import human_log
from .demo import install_demo
from .dev_key import ensure_dev_key
from .function_url import FrontLimits, FunctionUrlFront
from .human_log import escape
from .local_dynamodb import MotoServer
from .mock_upstream import mock_upstream_in_thread
from .serving import serve_in_thread
from .table import create_table

# The demo page's default extra body with the mock upstream: a slow, long answer, so Stop has time to matter.
DEMO_MOCK_OPTIONS = {"mock": {"tokens": 400, "chunk_delay_ms": 40, "ttft_ms": 200}}
LOCAL_AWS = (("AWS_ACCESS_KEY_ID", "dev"), ("AWS_SECRET_ACCESS_KEY", "dev"), ("AWS_REGION", "us-east-1"))


class DevEcho:
    """Finalizer that prints what each finished request did (dev only)."""

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        ttft = "-" if outcome.ttft_s is None else f"{outcome.ttft_s * 1000:.0f}ms"
        usage = outcome.usage
        line = (
            f"{ctx.request_id} {ctx.key.key_id} {ctx.chat.model} {ctx.mode}: {outcome.reason.value}"
            f" tokens={usage.prompt_tokens}+{usage.completion_tokens}{' (est)' if usage.estimated else ''}"
            f" ttft={ttft} duration={outcome.duration_s * 1000:.0f}ms"
        )
        print(f"[relay] {escape(line)}", flush=True)


def dynamodb_endpoint(given: str | None, stack: ExitStack) -> tuple[str, str]:
    """(endpoint, how it was chosen). A given endpoint is used as is: no moto is started here then."""
    if given:
        return given, "from RELAY_DYNAMODB_ENDPOINT"
    moto = MotoServer(port=int(os.environ.get("RELAY_MOTO_PORT", "0")))  # one request at a time, see the module
    return stack.enter_context(moto), "moto in this process"


def upstream_url(given: str | None, stack: ExitStack) -> tuple[str, str]:
    """(upstream base URL, how it was chosen): `RELAY_UPSTREAM_URL`, else the mock served here."""
    if given:
        return given, "from RELAY_UPSTREAM_URL"
    return stack.enter_context(mock_upstream_in_thread()), "mock upstream in this process"


def banner(settings: Settings, plain: str, key_id: str, upstream: str, dynamodb: str) -> str:
    """What `make dev` prints once ready: where everything is, the dev key and curl lines using it."""
    base = f"http://{settings.host}:{settings.port}"
    return f"""
llm-relay dev server
  relay     {base}   (demo page: {base}/)
  upstream  {settings.upstream_url}   ({upstream})
  DynamoDB  {settings.dynamodb_endpoint}   ({dynamodb}; table {settings.table_name})
  dev key   {plain}   (key id {key_id})

  curl -N {base}/v1/chat/completions -H 'Authorization: Bearer {plain}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"model":"gpt-4o-mini","stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}'

  curl -N {base}/api/v1/chat/stream -H 'Authorization: Bearer {plain}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello"}}]}}'
"""


def main() -> None:
    """Wire the local DynamoDB and the upstream into settings, then serve the production app with them."""
    for name, value in LOCAL_AWS:
        os.environ.setdefault(name, value)
    log_mode = os.environ.get("RELAY_DEV_LOG", "human")
    if log_mode not in human_log.MODES:
        raise SystemExit(f"RELAY_DEV_LOG must be one of {', '.join(human_log.MODES)}, not {log_mode!r}")
    if log_mode == "human":
        os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"  # no EMF documents on the console
    settings = Settings()
    with ExitStack() as stack:
        endpoint, dynamodb = dynamodb_endpoint(settings.dynamodb_endpoint, stack)
        url, upstream = upstream_url(settings.upstream_url, stack)
        settings = settings.model_copy(update={"dynamodb_endpoint": endpoint, "upstream_url": url})
        stores = Stores.from_settings(settings)
        create_table(stores.client, settings.table_name)
        plain, key = ensure_dev_key(stores.keys, settings.dev_key)
        print(banner(settings, plain, key.key_id, upstream, dynamodb), flush=True)
        app = create_app(settings, stores=stores, finalizers=[DevEcho()])
        install_demo(app, plain, DEMO_MOCK_OPTIONS if upstream.startswith("mock") else None)
        if log_mode == "human":
            human_log.install(settings.service_name)
        log_config = None if log_mode == "human" else uvicorn.config.LOGGING_CONFIG
        served: ASGIApp = app
        if os.environ.get("RELAY_DEV_LAMBDA", "") not in ("", "0"):
            served = lambda_front(settings, stores)
        uvicorn.run(
            served, host=settings.host, port=settings.port, log_level="warning", access_log=False, log_config=log_config
        )


def lambda_front(settings: Settings, stores: Stores) -> FunctionUrlFront:
    """The function-URL front, each of its execution environments a relay of its own (own poller, own state)."""
    limits = FrontLimits(
        function_timeout_s=settings.function_timeout_s,
        max_environments=int(os.environ.get("RELAY_DEV_LAMBDA_ENVIRONMENTS", "4")),
    )
    print(
        f"  function URL front: one request per environment, up to {limits.max_environments} environments, "
        f"function timeout {limits.function_timeout_s:g} s (RELAY_FUNCTION_TIMEOUT_S)",
        flush=True,
    )
    return FunctionUrlFront(
        lambda: serve_in_thread(create_app(settings, stores=stores, finalizers=[DevEcho()]), lifespan="on"), limits
    )


if __name__ == "__main__":
    main()

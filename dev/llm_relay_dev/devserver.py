"""`make dev`: the relay on 127.0.0.1:$PORT with a local DynamoDB, a mock upstream, a dev key and
ready-to-paste curl lines.

DynamoDB: the endpoint in `RELAY_DYNAMODB_ENDPOINT` when set (a `make dynamodb` shared by several relays; the
table is created there if missing), else a serialized moto server started in this process. Upstreams: the table in
`RELAY_UPSTREAMS` or the URL in `RELAY_UPSTREAM_URL` when set; else one of each kind, served from background
threads of this process and routed by model (`DEV_ROUTES`): `llama*` to the mock's Ollama mode, `inhouse-*` to its
NDJSON mode, `amazon.*` and `anthropic.*` to the local Bedrock server, every other model to the OpenAI-shaped mock.
The production app has no such fallback: it refuses to start without an upstream.

`RELAY_DEV_LAMBDA=1` (`make dev LAMBDA=1`): the relay behind a local function-URL front (function_url.py): no
disconnect passed on, the invocation deadline from `RELAY_FUNCTION_TIMEOUT_S`, 6 MB request cap, 2 MB/s after
6 MB, one request per environment, up to `RELAY_DEV_LAMBDA_ENVIRONMENTS` (4) environments started on demand.

Prints one human line per finished request, the figures the CloudWatch dashboard would show, and warnings;
`RELAY_DEV_LOG=json` adds the JSON log lines and EMF documents Lambda would print (`human_log`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import ExitStack

import uvicorn
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI
from starlette.types import ASGIApp

from llm_relay.app import create_app
from llm_relay.dynamo import Stores
from llm_relay.errors import StoreUnavailable
from llm_relay.leases import Leases
from llm_relay.limits import Admission
from llm_relay.outcome import RequestContext, StreamOutcome
from llm_relay.serve import http_server, refusing_to_start
from llm_relay.settings import Settings

from . import human_log
from .bedrock_local import bedrock_local_in_thread
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
        caught = {**{f"prompt:{k}": v for k, v in ctx.prompt_redactions.items()}, **outcome.redactions}
        if caught:
            line += " redactions=" + ",".join(f"{name}={count}" for name, count in sorted(caught.items()))
        print(f"[relay] {escape(line)}", flush=True)


def dynamodb_endpoint(given: str | None, stack: ExitStack) -> tuple[str, str]:
    """(endpoint, how it was chosen). A given endpoint is used as is: no moto is started here then."""
    if given:
        return given, "from RELAY_DYNAMODB_ENDPOINT"
    moto = MotoServer(port=int(os.environ.get("RELAY_MOTO_PORT", "0")))  # one request at a time, see the module
    return stack.enter_context(moto), "moto in this process"


def dev_routes(mock_v1: str, bedrock: str) -> list[dict[str, object]]:
    """The upstream table of `make dev` without a given upstream: a model routed to each kind, all served here."""
    root = mock_v1.removesuffix("/v1")
    return [
        # A literal name is listed by /v1/models; a glob routes every name it matches.
        {"name": "ollama-mock", "kind": "ollama", "url": root, "models": ["llama3.2", "llama*"]},
        {"name": "ndjson-mock", "kind": "ndjson", "url": f"{root}/ndjson/chat", "models": ["inhouse-1", "inhouse-*"]},
        {
            "name": "bedrock-local",
            "kind": "bedrock",
            "url": bedrock,
            "region": "us-east-1",
            "models": ["amazon.nova-lite-v1:0", "amazon.*", "anthropic.*"],
        },
        {"name": "openai-mock", "kind": "openai", "url": mock_v1, "models": ["*"]},
    ]


def upstreams(settings: Settings, stack: ExitStack) -> tuple[dict[str, object], str]:
    """(settings updates, how the upstreams were chosen): the given table or URL, else one of each kind here."""
    if settings.upstreams:
        return {}, "from RELAY_UPSTREAMS"
    if settings.upstream_url:
        return {}, "from RELAY_UPSTREAM_URL"
    mock = stack.enter_context(mock_upstream_in_thread())
    bedrock = stack.enter_context(bedrock_local_in_thread())
    routes = json.dumps(dev_routes(mock, bedrock))
    guardrail = {"guardrail_endpoint": bedrock} if settings.guardrail_id and not settings.guardrail_endpoint else {}
    return {"upstreams": routes, **guardrail}, "mock upstream and local Bedrock in this process"


def banner(settings: Settings, plain: str, key_id: str, upstream: str, dynamodb: str) -> str:
    """What `make dev` prints once ready: where everything is, the dev key and curl lines using it."""
    base = f"http://{settings.host}:{settings.port}"
    return f"""
llm-relay dev server
  relay     {base}   (demo page: {base}/)
{_upstream_lines(settings, upstream)}
  DynamoDB  {settings.dynamodb_endpoint}   ({dynamodb}; table {settings.table_name})
  dev key   {plain}   (key id {key_id})
{_gate_line(settings)}

  curl -N {base}/v1/chat/completions -H 'Authorization: Bearer {plain}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"model":"gpt-4o-mini","stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}'

  curl -N {base}/api/v1/chat/stream -H 'Authorization: Bearer {plain}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello"}}]}}'
{_other_kinds(settings)}"""


def _gate_line(settings: Settings) -> str:
    """The compliance gate in force for keys without a policy of their own (and the guardrail, if any)."""
    policy = settings.sanitize_policy
    line = f"  gate      output {policy.output.mode}, prompt {policy.prompt.mode}"
    line += "   (RELAY_SANITIZE, RELAY_SANITIZE_PROMPT)"
    if settings.guardrail_id:
        how = f"{settings.guardrail_mode}, {settings.guardrail_on_error}"
        line += f"\n            guardrail {settings.guardrail_id} ({how}) at {settings.guardrail_endpoint or 'AWS'}"
    return line


def _other_kinds(settings: Settings) -> str:
    """With the dev routes: the models that reach the other kinds, to put in either curl line."""
    if settings.upstreams is None or "bedrock-local" not in settings.upstreams:
        return ""
    return (
        "\n  Other kinds of upstream, same lines with another model: llama3.2 (Ollama NDJSON), inhouse-1 (NDJSON),\n"
        "  amazon.nova-lite-v1:0 (Bedrock ConverseStream, local server)\n"
    )


def _upstream_lines(settings: Settings, how: str) -> str:
    if not settings.upstreams:
        return f"  upstream  {settings.upstream_url}   ({how})"
    lines = [f"  upstreams ({how}):"]
    entries = json.loads(settings.upstreams)
    width = max(22, *(len(", ".join(entry["models"])) for entry in entries))
    for entry in entries:
        where = entry.get("url") or entry.get("region") or ""
        lines.append(f"    {', '.join(entry['models']):<{width}} -> {entry['name']} ({entry['kind']}) {where}")
    return "\n".join(lines)


def main(*, limiter: Admission | None = None, leases: Leases | None = None) -> None:
    """Wire the local DynamoDB and the upstream into settings, then serve the production app with them. `limiter` and
    `leases` replace the app's own (a benchmark that takes the relay's DynamoDB work out)."""
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
        routed, upstream = upstreams(settings, stack)
        settings = settings.model_copy(update={"dynamodb_endpoint": endpoint, **routed})
        create_app(settings)  # every refusal of the relay's, before anything uses the settings (LAMBDA=1 builds later)
        stores, plain, key_id = prepare_dynamodb(settings)
        print(banner(settings, plain, key_id, upstream, dynamodb), flush=True)
        demo_options = DEMO_MOCK_OPTIONS if upstream.startswith("mock") else None

        def relay() -> FastAPI:
            app = create_app(settings, stores=stores, limiter=limiter, leases=leases, finalizers=[DevEcho()])
            install_demo(app, plain, demo_options)
            return app

        if log_mode == "human":
            human_log.install(settings.service_name)
        log_config = None if log_mode == "human" else uvicorn.config.LOGGING_CONFIG
        lambda_mode = os.environ.get("RELAY_DEV_LAMBDA", "") not in ("", "0")
        served: ASGIApp = lambda_front(settings, relay) if lambda_mode else relay()
        # The production entry point's server: its socket and protocol (small send buffers: a slow reader still gets
        # the terminal frame at the deadline, as on Lambda).
        server, sock = http_server(served, settings.host, settings.port, log_level="warning", log_config=log_config)
        server.run(sockets=[sock])


def prepare_dynamodb(settings: Settings) -> tuple[Stores, str, str]:
    """The stores, the table and the dev key (plain, key id); a DynamoDB that cannot be used ends `make dev` with
    one line naming its endpoint (botocore's retries would otherwise end in screens of tracebacks)."""
    try:
        stores = Stores.from_settings(settings)
        create_table(stores.client, settings.table_name)
        plain, key = ensure_dev_key(stores.keys, settings.dev_key)
    except (BotoCoreError, ClientError, StoreUnavailable, ValueError) as exc:
        raise SystemExit(
            f"make dev: DynamoDB at {settings.dynamodb_endpoint} cannot be used: {_one_line(exc)}"
            " (check RELAY_DYNAMODB_ENDPOINT, or unset it to use a moto server started here)"
        ) from None
    return stores, plain, key.key_id


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def lambda_front(settings: Settings, relay: Callable[[], FastAPI]) -> FunctionUrlFront:
    """The function-URL front, each of its execution environments a relay of its own (own poller, own state),
    with the demo page like the relay without the front."""
    limits = FrontLimits(
        function_timeout_s=settings.function_timeout_s,
        max_environments=int(os.environ.get("RELAY_DEV_LAMBDA_ENVIRONMENTS", "4")),
    )
    print(
        f"  function URL front: one request per environment, up to {limits.max_environments} environments, "
        f"function timeout {limits.function_timeout_s:g} s (RELAY_FUNCTION_TIMEOUT_S)",
        flush=True,
    )
    return FunctionUrlFront(lambda: serve_in_thread(relay(), lifespan="on"), limits)


if __name__ == "__main__":
    with refusing_to_start():  # a configuration the relay refuses: one line and exit 2, as in production
        main()

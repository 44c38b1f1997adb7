"""`make dev`: the relay on 127.0.0.1:$PORT with DynamoDB served by a local moto server, the embedded
mock upstream (unless RELAY_UPSTREAM_URL is set), a dev key, and a ready-to-paste curl line.

Prints one human line per finished request, the figures the CloudWatch dashboard would show.
"""

from __future__ import annotations

import os

import uvicorn

from .app import create_app
from .dynamo import Stores
from .local import create_table, ensure_dev_key
from .outcome import RequestContext, StreamOutcome
from .settings import Settings


class DevEcho:
    """Finalizer that prints what each finished request did (dev only)."""

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        ttft = "-" if outcome.ttft_s is None else f"{outcome.ttft_s * 1000:.0f}ms"
        usage = outcome.usage
        print(
            f"[relay] {ctx.request_id} {ctx.key.key_id} {ctx.chat.model} {ctx.mode}: {outcome.reason.value}"
            f" tokens={usage.prompt_tokens}+{usage.completion_tokens}{' (est)' if usage.estimated else ''}"
            f" ttft={ttft} duration={outcome.duration_s * 1000:.0f}ms",
            flush=True,
        )


def _start_moto() -> str:
    from .local_moto import MotoServer  # one request at a time: moto's transactions are not atomic otherwise

    return MotoServer(port=int(os.environ.get("RELAY_MOTO_PORT", "0"))).start()


def main() -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "dev"), ("AWS_SECRET_ACCESS_KEY", "dev"), ("AWS_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    if not os.environ.get("RELAY_DYNAMODB_ENDPOINT"):
        os.environ["RELAY_DYNAMODB_ENDPOINT"] = _start_moto()
    settings = Settings()
    stores = Stores.from_settings(settings)
    create_table(stores.client, settings.table_name)
    plain, key = ensure_dev_key(stores.keys, settings.dev_key)
    base = f"http://{settings.host}:{settings.port}"
    upstream = settings.upstream_url or "embedded mock upstream"
    print(
        f"""
llm-relay dev server
  relay     {base}   (upstream: {upstream}; DynamoDB: {settings.dynamodb_endpoint})
  dev key   {plain}   (key id {key.key_id})

  curl -N {base}/v1/chat/completions -H 'Authorization: Bearer {plain}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"model":"gpt-4o-mini","stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}'

  curl -N {base}/api/v1/chat/stream -H 'Authorization: Bearer {plain}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello"}}]}}'
""",
        flush=True,
    )
    app = create_app(settings, stores=stores, finalizers=[DevEcho()])
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

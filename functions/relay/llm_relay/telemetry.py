"""Per-request telemetry: one structured summary log line (Powertools Logger) and the request's metrics
(EMF), for every admitted request (a `Finalizer`) and every rejected one (`rejected`).

Under the web adapter there is no Lambda handler to decorate, so the Lambda request id comes from the
`x-amzn-lambda-context` header the adapter adds (`lambda_context.py`); it is logged as `lambda_request_id`.
Never logged: prompts, completions, API keys, upstream keys, Authorization values.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from .metrics import MetricsEmitter
from .outcome import RequestContext, StreamOutcome
from .sanitize.policy import POLICY_VERSION


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _policy_text(ctx: RequestContext) -> str:
    policy = ctx.policy
    return f"output={policy.output.mode} prompt={policy.prompt.mode} v{POLICY_VERSION}"


class Telemetry:
    def __init__(self, metrics: MetricsEmitter, logger: Logger) -> None:
        self.metrics = metrics
        self.logger = logger

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        fields: dict[str, Any] = {
            "request_id": ctx.request_id,
            "lambda_request_id": ctx.lambda_request_id,
            "client_request_id": ctx.client_request_id,
            "key_id": ctx.key.key_id,
            "model": ctx.chat.model,
            "mode": ctx.mode,
            "upstream": outcome.upstream or None,
            "reason": outcome.reason.value,
            "prompt_tokens": outcome.usage.prompt_tokens,
            "completion_tokens": outcome.usage.completion_tokens,
            "usage_source": outcome.usage.source,
            "cost_usd": None if outcome.cost_usd is None else format(outcome.cost_usd, "f"),
            "ttft_ms": _ms(outcome.ttft_s),
            "tpot_ms": _ms(outcome.tpot_s),
            "duration_ms": _ms(outcome.duration_s),
            "chunks": outcome.chunks,
            "retries": outcome.retries,
            "upstream_errors": outcome.upstream_errors or None,
            "cancel_source": outcome.cancel_source,
            "cancel_latency_ms": _ms(outcome.cancel_latency_s),
            "error": outcome.error,
            # The compliance gate's audit: counts by entity type, never a value.
            "redactions": dict(outcome.redactions) or None,
            "prompt_redactions": dict(ctx.prompt_redactions) or None,
            "guardrail_action": outcome.guardrail_action,
            "holdback_chars": outcome.holdback_chars or None,
            "sanitize_policy": _policy_text(ctx) if ctx.policy.on else None,
        }
        self.logger.info("request finished", extra={k: v for k, v in fields.items() if v is not None})
        self.metrics.request_finished(ctx, outcome)

    def rejected(
        self, reason: str, status: int, code: str | None, request_id: str | None, lambda_id: str | None
    ) -> None:
        """A request refused before admission (or by it): log line and the rejection metric."""
        fields = {
            "request_id": request_id,
            "lambda_request_id": lambda_id,
            "reason": reason,
            "status": status,
            "code": code,
        }
        self.logger.info("request rejected", extra={k: v for k, v in fields.items() if v is not None})
        self.metrics.rejection(reason)

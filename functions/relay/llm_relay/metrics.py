"""CloudWatch metrics as EMF through Powertools: every metric and dimension name lives here, and the
dashboard and alarms in template.yaml are checked against `CATALOGUE` (tests/packaging/test_dashboard.py).

Each request flushes its own metric sets (Powertools `EphemeralMetrics`, one EMF document per dimension
set), so concurrent streams in one process never mix their figures. Dimensions stay low-cardinality:
the termination or rejection reason, the model only when it is a known one (allow-list or price table,
else `other`), the service; never key ids or free text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from .outcome import RequestContext, StreamOutcome

# Metric names.
STREAMS = "StreamsTerminated"
REJECTIONS = "RequestsRejected"
TTFT = "TimeToFirstToken"
TPOT = "TimePerOutputToken"
DURATION = "StreamDuration"
PROMPT_TOKENS = "PromptTokens"
COMPLETION_TOKENS = "CompletionTokens"
COST = "CostUSD"
UNPRICED = "UnpricedRequests"
RETRIES = "UpstreamRetries"
UPSTREAM_ERRORS = "UpstreamErrors"
CANCEL_LATENCY = "ClientCancelLatency"
ADMISSION_REJECTED = "AdmissionRejected"
ADMISSION_STORE_ERROR = "AdmissionStoreError"
ADMISSION_ATTEMPTS = "AdmissionAttempts"
USAGE_WRITE_FAILED = "UsageWriteFailed"
BUDGET_EXTENSIONS = "BudgetExtensions"
RECONCILED_LOST = "RequestsReconciledLost"
REDACTIONS = "Redactions"
GUARDRAIL = "GuardrailInterventions"
OUTPUT_VALIDATION = "OutputValidation"

# Dimension names.
REASON = "reason"
MODEL = "model"
STATUS_CLASS = "status_class"
CHANNEL = "channel"
LIMIT = "limit"
POLICY = "policy"
RESULT = "result"
ENTITY = "entity"
SIDE = "side"
ACTION = "action"
SERVICE = "service"

OTHER_MODEL = "other"

REJECTION_REASONS = (
    "unauthorized",
    "invalid_request",
    "model_not_allowed",
    "rate_limited",
    "budget_exceeded",
    "model_not_priced",
    "unavailable",
    "prompt_refused",
)


#: What each dimension holds (the metrics reference, docs/reference/metrics.md, shows it).
DIMENSIONS = {
    REASON: "The termination reason (`StreamsTerminated`) or the rejection reason (`RequestsRejected`: "
    + ", ".join(f"`{reason}`" for reason in REJECTION_REASONS)
    + ").",
    MODEL: "The model the request named when it is a known one (in the allow-list or the price table), else `other`, "
    "so its values stay a bounded set whatever clients send.",
    STATUS_CLASS: "What a failed upstream attempt ended with: its HTTP status class (`4xx`, `5xx`), `timeout` or "
    "`connect`.",
    CHANNEL: "How the cancel reached the relay: `disconnect` (the client went away) or `cancel_call` (the cancel "
    "endpoint).",
    LIMIT: "The limit that refused the request: `rpm`, `tpm`, `max_concurrent`, `daily_budget_usd` or "
    "`monthly_budget_usd`.",
    POLICY: "What admission did without DynamoDB: `fail_closed` (503) or `fail_open` (admitted).",
    RESULT: "A budget extension's result (`BudgetExtensions`: `granted`, `refused` or `store_error`), or an answer's "
    "validation (`OutputValidation`: `valid` or `invalid`).",
    ENTITY: "The entity type the compliance gate caught (`EMAIL`, `CREDIT_CARD`, ...): a fixed, built-in set.",
    SIDE: "Where the gate caught it: `prompt` or `output`.",
    ACTION: "The guardrail's outcome: `ANONYMIZED`, `BLOCKED` or `unavailable`.",
    SERVICE: "The service name (`POWERTOOLS_SERVICE_NAME`): on every metric, alone in the roll-ups alarms use.",
}

BY_SERVICE = (SERVICE,)
BY_MODEL = (MODEL, SERVICE)


@dataclass(frozen=True)
class MetricSpec:
    """A metric the code emits, with every dimension set it is published under (EMF can publish one
    value under several sets: per model, and rolled up per service for alarms)."""

    name: str
    unit: MetricUnit
    dimension_sets: tuple[tuple[str, ...], ...]
    description: str


_COUNT, _MS = MetricUnit.Count, MetricUnit.Milliseconds
CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec(STREAMS, _COUNT, ((REASON, SERVICE),), "Requests that were admitted and ended, by termination reason."),
    MetricSpec(REJECTIONS, _COUNT, ((REASON, SERVICE),), "Requests refused before or at admission, by reason."),
    MetricSpec(TTFT, _MS, (BY_MODEL, BY_SERVICE), "Time to the first token, from the request's arrival."),
    MetricSpec(TPOT, _MS, (BY_MODEL, BY_SERVICE), "Mean time per output token after the first."),
    MetricSpec(DURATION, _MS, (BY_MODEL, BY_SERVICE), "How long a request took, from arrival to its end."),
    MetricSpec(PROMPT_TOKENS, _COUNT, (BY_MODEL, BY_SERVICE), "A request's prompt tokens."),
    MetricSpec(COMPLETION_TOKENS, _COUNT, (BY_MODEL, BY_SERVICE), "A request's completion tokens."),
    MetricSpec(COST, MetricUnit.NoUnit, (BY_MODEL, BY_SERVICE), "A priced request's cost, in USD."),
    MetricSpec(UNPRICED, _COUNT, (BY_MODEL, BY_SERVICE), "Requests for a model without a price (cost unknown)."),
    MetricSpec(RETRIES, _COUNT, (BY_SERVICE,), "Upstream attempts retried before a request's first byte."),
    MetricSpec(
        UPSTREAM_ERRORS, _COUNT, ((STATUS_CLASS, SERVICE),), "Failed upstream attempts, by what they ended with."
    ),
    MetricSpec(
        CANCEL_LATENCY,
        _MS,
        ((CHANNEL, SERVICE),),
        "From a cancel (or a disconnect) to the upstream's close, by channel.",
    ),
    MetricSpec(ADMISSION_REJECTED, _COUNT, ((LIMIT, SERVICE),), "Admissions refused, by the limit that refused them."),
    MetricSpec(
        ADMISSION_STORE_ERROR,
        _COUNT,
        ((POLICY, SERVICE),),
        "Admissions that could not reach DynamoDB, by what was done instead.",
    ),
    MetricSpec(
        ADMISSION_ATTEMPTS,
        _COUNT,
        (BY_SERVICE,),
        "Transactions an admission took (above 1: it conflicted with concurrent writes and tried again).",
    ),
    MetricSpec(
        USAGE_WRITE_FAILED,
        _COUNT,
        (BY_SERVICE,),
        "Usage records that could not be written in time: logged whole and left to the reconciler.",
    ),
    MetricSpec(
        BUDGET_EXTENSIONS, _COUNT, ((RESULT, SERVICE),), "Budget reservations extended while streaming, by result."
    ),
    MetricSpec(
        RECONCILED_LOST,
        _COUNT,
        (BY_SERVICE,),
        "Requests settled as `lost`, whoever settled them: the relay stopped without finalizing (alarm: above zero).",
    ),
    MetricSpec(
        REDACTIONS,
        _COUNT,
        ((ENTITY, SIDE, SERVICE),),
        "Values the compliance gate caught, by entity type and side (prompt or output).",
    ),
    MetricSpec(
        GUARDRAIL,
        _COUNT,
        ((ACTION, SERVICE),),
        "Bedrock guardrail outcomes other than none: `ANONYMIZED`, `BLOCKED`, `unavailable`.",
    ),
    MetricSpec(
        OUTPUT_VALIDATION,
        _COUNT,
        ((RESULT, SERVICE),),
        "Answers the relay validated (a structured output asked for, or tool calls made), by result: `valid` or "
        "`invalid` (whatever `RELAY_VALIDATE` then did with it).",
    ),
)
SPECS = {spec.name: spec for spec in CATALOGUE}

Sink = Callable[[str], None]


def stdout_sink(line: str) -> None:
    """Lambda ships stdout to CloudWatch Logs, which extracts EMF documents into metrics. Powertools' own switch
    (`POWERTOOLS_METRICS_DISABLED`) silences it, as it does Powertools' metrics: `make dev`'s console uses it."""
    if is_metrics_disabled():
        return
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class MetricsEmitter:
    def __init__(
        self, namespace: str, service: str, known_models: Iterable[str] = (), sink: Sink = stdout_sink
    ) -> None:
        self.namespace = namespace
        self.service = service
        self._known_models = frozenset(known_models)
        self._sink = sink

    def model_dimension(self, model: str) -> str:
        return model if model in self._known_models else OTHER_MODEL

    def emit(self, values: dict[str, float], dimensions: dict[str, str] | None = None) -> None:
        """One EMF document: these metrics under the dimension sets CATALOGUE gives them (all alike)."""
        dims = {**(dimensions or {}), SERVICE: self.service}
        sets = {SPECS[name].dimension_sets for name in values}
        if len(sets) != 1:
            raise ValueError(f"metrics with different dimension sets in one document: {sorted(values)}")
        dimension_sets = sets.pop()
        if set(dimension_sets[0]) != set(dims):
            raise ValueError(f"{sorted(values)} take dimensions {dimension_sets[0]}, got {sorted(dims)}")
        metrics = EphemeralMetrics(namespace=self.namespace, service=self.service)
        for name, value in values.items():
            metrics.add_metric(name=name, unit=SPECS[name].unit, value=value)
        for key, dim_value in dims.items():
            if key != SERVICE:
                metrics.add_dimension(name=key, value=dim_value)
        for rollup in dimension_sets[1:]:
            metrics.add_dimensions(**{key: dims[key] for key in rollup})
        self._sink(json.dumps(metrics.serialize_metric_set(), separators=(",", ":")))

    def rejection(self, reason: str) -> None:
        self.emit({REJECTIONS: 1}, {REASON: reason})

    # --- what the limits report (`limits.reporting.LimitsMetrics`) ------------------------------------------------
    def admission_attempts(self, attempts: int) -> None:
        self.emit({ADMISSION_ATTEMPTS: attempts})

    def admission_rejected(self, limit: str) -> None:
        self.emit({ADMISSION_REJECTED: 1}, {LIMIT: limit})

    def admission_store_error(self, policy: str) -> None:
        self.emit({ADMISSION_STORE_ERROR: 1}, {POLICY: policy})

    def budget_extension(self, result: str) -> None:
        self.emit({BUDGET_EXTENSIONS: 1}, {RESULT: result})

    def usage_write_failed(self) -> None:
        self.emit({USAGE_WRITE_FAILED: 1})

    def request_finished(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        cost = outcome.cost_usd
        model = self.model_dimension(ctx.chat.model)
        self.emit({STREAMS: 1}, {REASON: outcome.reason.value})
        per_model: dict[str, float] = {
            DURATION: outcome.duration_s * 1000,
            PROMPT_TOKENS: outcome.usage.prompt_tokens,
            COMPLETION_TOKENS: outcome.usage.completion_tokens,
        }
        if outcome.ttft_s is not None:
            per_model[TTFT] = outcome.ttft_s * 1000
        if outcome.tpot_s is not None:
            per_model[TPOT] = outcome.tpot_s * 1000
        if cost is None:
            per_model[UNPRICED] = 1
        else:
            per_model[COST] = float(cost)
        self.emit(per_model, {MODEL: model})
        self.emit({RETRIES: outcome.retries})
        for status_class, count in sorted(outcome.upstream_errors.items()):
            self.emit({UPSTREAM_ERRORS: count}, {STATUS_CLASS: status_class})
        if outcome.cancel_latency_s is not None and outcome.cancel_source is not None:
            self.emit({CANCEL_LATENCY: outcome.cancel_latency_s * 1000}, {CHANNEL: outcome.cancel_source})
        self.redactions(ctx.prompt_redactions, "prompt")
        self.redactions(outcome.redactions, "output")
        if outcome.guardrail_action not in (None, "NONE"):
            self.emit({GUARDRAIL: 1}, {ACTION: str(outcome.guardrail_action)})
        if outcome.validation is not None:
            self.emit({OUTPUT_VALIDATION: 1}, {RESULT: "valid" if outcome.validation.valid else "invalid"})

    def redactions(self, counts: Mapping[str, int], side: str) -> None:
        """The compliance gate's catches: entity types are a fixed, built-in set (a low-cardinality dimension)."""
        for entity, count in sorted(counts.items()):
            self.emit({REDACTIONS: count}, {ENTITY: entity, SIDE: side})

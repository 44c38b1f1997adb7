"""One typed settings object, read from the environment once at start-up.

Environment names are the ones `template.yaml` sets on the function; `tests/packaging/test_template.py` keeps the
two in agreement.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from .sanitize.policy import Policy


class Settings(BaseSettings):
    """Relay configuration. Every field maps to an environment variable (`RELAY_` prefix unless aliased); its
    `description` is the one the configuration reference (docs/reference/configuration.md) shows."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", populate_by_name=True)

    port: int = Field(
        default=8080, alias="PORT", ge=1, le=65535, description="The port the relay listens on (8000 on Lambda)."
    )
    host: str = Field(default="127.0.0.1", description="The address `make dev` serves the relay on.")

    # Upstream LLM provider.
    upstream_url: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL ending in `/v1`: the one-upstream shorthand of `RELAY_UPSTREAMS`. "
        "Exactly one of the two is set: with neither the relay refuses to start (only `make dev` fills it in, with "
        "the URL of the mock upstream it starts).",
    )
    upstreams: str | None = Field(
        default=None,
        description="The upstream table: a JSON list routing models by glob to `openai`, `ollama`, `ndjson` and "
        "`bedrock` upstreams, with fallbacks.",
    )
    upstream_api_key: str | None = Field(
        default=None, repr=False, description="The upstream provider's key, for local use (on AWS: a secret)."
    )
    upstream_secret_arn: str | None = Field(
        default=None,
        description="On AWS: the Secrets Manager secret holding the upstream key (plain, or JSON "
        '`{"api_key": "..."}`), read through Powertools Parameters and cached 5 minutes, so a rotation is picked up '
        "without a cold start.",
    )
    upstream_ssm_parameter: str | None = Field(
        default=None,
        description="On AWS: the SSM SecureString parameter holding the upstream key (cached 5 minutes), when it "
        "is not a secret.",
    )
    upstream_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Seconds to connect to the upstream before the attempt fails."
    )
    upstream_idle_timeout_s: float = Field(
        default=30.0, gt=0, description="No upstream bytes for this many seconds ends a stream `upstream_timeout`."
    )
    upstream_first_token_timeout_s: float = Field(
        default=120.0, gt=0, description="No first token for this many seconds ends a stream `upstream_timeout`."
    )
    upstream_max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of a failed upstream attempt before the first byte (connect and pool errors, 429, "
        "500, 502, 503), only while nothing can have reached a model.",
    )
    upstream_retry_base_s: float = Field(
        default=0.2,
        gt=0,
        description="The backoff's base in seconds: the wait before retry n is drawn between 0 and base * 2^n "
        "(full jitter), at most `RELAY_UPSTREAM_RETRY_MAX_S`.",
    )
    upstream_retry_max_s: float = Field(
        default=4.0,
        gt=0,
        description="The longest wait between two attempts, in seconds, a `Retry-After` from the upstream included.",
    )
    retry_ambiguous: bool = Field(
        default=False,
        description="Also retry the same upstream after a 408, a 504 or a close without an answer. A model may have "
        "generated (and its provider billed) for such an attempt, so by default the request fails instead (the "
        "usage record counts such attempts: `attempts_maybe_billed`).",
    )

    allowed_models: str = Field(default="*", description="Comma-separated model allow-list, or `*` for any model.")
    max_body_bytes: int = Field(
        default=1024 * 1024, gt=0, description="The largest request body, checked while reading (413 beyond it)."
    )
    max_tokens_cap: int = Field(
        default=32768, gt=0, description="The largest `max_tokens` a request may ask for (400 beyond it)."
    )

    # Telemetry (Powertools' own variable names, so Logger and Metrics read the same values).
    service_name: str = Field(
        default="llm-relay",
        alias="POWERTOOLS_SERVICE_NAME",
        description="The service named in logs and in every metric's `service` dimension.",
    )
    metrics_namespace: str = Field(
        default="LLMRelay", alias="POWERTOOLS_METRICS_NAMESPACE", description="The CloudWatch namespace of the metrics."
    )
    log_level: str = Field(default="INFO", alias="POWERTOOLS_LOG_LEVEL", description="The log level.")

    # State.
    table_name: str = Field(
        default="llm-relay", description="The DynamoDB table of keys, limits, the ledger and usage."
    )
    dynamodb_endpoint: str | None = Field(
        default=None,
        description="A local DynamoDB (`make dynamodb`); unset: AWS's. `make dev` starts its own when it is unset.",
    )
    aws_region: str | None = Field(
        default=None, alias="AWS_REGION", description="The AWS region; unset: the boto3 session's region."
    )
    auth_cache_ttl_s: float = Field(
        default=30.0,
        ge=0,
        description="Seconds a key lookup is cached: a revocation or a limit change takes effect within it.",
    )
    dev_key: str | None = Field(
        default=None,
        repr=False,
        description="The value of the dev key that `make dev` and `make invoke` create (unset: a random one).",
    )

    # Streaming behaviour.
    cancel_poll_interval_s: float = Field(
        default=0.2,
        gt=0,
        description="How often a stream checks the table for an explicit cancel, in seconds: it stops within one "
        "interval.",
    )
    heartbeat_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="While a stream is silent (a slow first token), a heartbeat every this many seconds: a `: ping` "
        "comment (SSE) or a blank line (NDJSON), which clients skip.",
    )
    flush_nudge: bool = Field(
        default=False,
        description="Write a blank line after each event, so that the function URL does not hold back small writes "
        "(`template.yaml` sets it).",
    )
    function_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="The function's timeout: where there is no Lambda context to give the deadline, a stream's "
        "deadline is this long after it started.",
    )
    deadline_margin_s: float = Field(
        default=5.0,
        ge=0,
        description="A stream ends cleanly (`deadline`) this many seconds before the function's deadline, so its "
        "terminal event and usage record get out. Below `RELAY_FUNCTION_TIMEOUT_S`.",
    )
    request_ttl_s: int = Field(
        default=86400,
        gt=0,
        description="Seconds the in-flight request item that admission writes lives before DynamoDB's TTL deletes it.",
    )
    snapstart_after_restore_path: str | None = Field(
        default=None,
        alias="AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH",
        description="The web adapter's variable, set by the template when SnapStart is on: the relay serves its "
        "after-restore hook on this path.",
    )

    # Per-key limits: defaults for keys whose record does not set them.
    default_rpm: int | None = Field(
        default=None, ge=0, description="Requests per minute, for keys without their own (unset or empty: unlimited)."
    )
    default_tpm: int | None = Field(
        default=None, ge=0, description="Tokens per minute, for keys without their own (unset or empty: unlimited)."
    )
    default_max_concurrent: int | None = Field(
        default=None,
        ge=0,
        description="Concurrent streams, for keys without their own limit (unset or empty: unlimited).",
    )
    default_daily_budget_usd: Decimal | None = Field(
        default=None,
        ge=0,
        description="Spend per UTC day in USD, for keys without their own budget (unset or empty: unlimited).",
    )
    default_monthly_budget_usd: Decimal | None = Field(
        default=None,
        ge=0,
        description="Spend per UTC month in USD, for keys without their own budget (unset or empty: unlimited).",
    )
    lease_s: float = Field(
        default=60.0,
        ge=3,
        description="A stream's concurrency lease in seconds, renewed (with a progress checkpoint) every third of it "
        "while the stream runs, so a killed relay's slots come back within one lease.",
    )
    admission_timeout_s: float = Field(
        default=2.0, gt=0, description="The longest admission waits for DynamoDB, in seconds; then 503."
    )
    finalize_timeout_s: float = Field(
        default=4.0,
        gt=0,
        description="The longest finalization waits for DynamoDB, in seconds (under 5 s with telemetry and the "
        "close); then the request is left to the reconciler.",
    )
    admission_fail_open: bool = Field(
        default=False,
        description="DynamoDB down at admission: admit anyway (logged loudly) instead of answering 503, once "
        "nothing is held for the request.",
    )
    usage_retention_days: int = Field(
        default=90, gt=0, description="Days a usage record is kept before DynamoDB's TTL deletes it."
    )
    prices_json: str | None = Field(
        default=None,
        description="Price overrides, a JSON object or the path of a file holding one: replaces the packaged prices "
        "model by model.",
    )
    budget_increment_tokens: int = Field(
        default=1024,
        ge=1,
        description="Completion tokens a budgeted request reserves at a time: at admission, then ahead of need "
        "while it streams.",
    )
    unpriced_models: Literal["refuse", "allow"] = Field(
        default="refuse",
        description="A model without a price, for a key with a budget: `refuse` (400 `model_not_priced`) or "
        "`allow` (admitted with its cost unknown, which bypasses the budget).",
    )

    # The compliance gate (`sanitize`): the deployment's policy, a floor that a key's own policy can only tighten.
    sanitize: Literal["off", "redact", "block"] = Field(
        default="off",
        description="The compliance gate on answers: `redact` (a value becomes its placeholder) or `block` (the "
        "stream ends `content_filter`). A key's own policy can only tighten it.",
    )
    sanitize_prompt: Literal["off", "redact", "block"] = Field(
        default="off",
        description="The compliance gate on prompts, before anything is admitted or sent: `redact`, or `block` "
        "(400 `pii_in_prompt`).",
    )
    sanitize_entities: str = Field(
        default="", description="Comma-separated entity types the gate looks for (empty: every built-in type)."
    )
    sanitize_placeholder: str = Field(
        default="[{entity}]",
        description="What a redacted value becomes; `{entity}` is its type. No quotes or backslashes: it goes into "
        "JSON strings.",
    )
    sanitize_phone_region: str = Field(
        default="US",
        min_length=2,
        max_length=2,
        description="The region that phone numbers written without a country code are read in.",
    )
    # Amazon Bedrock Guardrails (`ApplyGuardrail`), optional: applied to the prompt and to the output in windows.
    guardrail_id: str | None = Field(
        default=None,
        description="An Amazon Bedrock guardrail (its ID) applied to prompts and, in windows, to answers; unset: none.",
    )
    guardrail_version: str = Field(default="DRAFT", description="The guardrail's version, a number or `DRAFT`.")
    guardrail_mode: Literal["sync", "async"] = Field(
        default="sync",
        description="`sync`: each window of the answer is held until it is judged (one call's latency per window); "
        "`async`: the answer is released at once and judged behind it, a block ending the stream when known.",
    )
    guardrail_window_chars: int = Field(
        default=50,
        ge=10,
        le=10000,
        description="The size of the windows the answer is judged in, in characters, cut at a sentence or word end.",
    )
    guardrail_on_error: Literal["fail_closed", "fail_open"] = Field(
        default="fail_closed",
        description="When the guardrail fails or times out: `fail_closed` (refuse the prompt, end the stream) or "
        "`fail_open` (go on unassessed, logged).",
    )
    guardrail_timeout_s: float = Field(
        default=2.0, gt=0, description="The longest wait for one guardrail call, in seconds."
    )
    guardrail_endpoint: str | None = Field(
        default=None, description="A local Bedrock endpoint (tests, `make dev`); unset: the region's."
    )

    # The assembled answer's validation (`validation`): structured outputs and tool-call arguments.
    output_validation: Literal["report", "enforce"] = Field(
        default="report",
        alias="RELAY_VALIDATE",
        description="What the relay does with an answer that fails its validation (JSON for `response_format`, "
        "the schema for `json_schema`, JSON object arguments for tool calls): `report` (the verdict is on the "
        "summary, the final chunk, the record, the log line and the `OutputValidation` metric) or `enforce` (also "
        "ends the answer with the terminal error `invalid_output`; `stream: false` gets a 502).",
    )

    @field_validator(
        "guardrail_id",
        "guardrail_endpoint",
        "default_rpm",
        "default_tpm",
        "default_max_concurrent",
        "default_daily_budget_usd",
        "default_monthly_budget_usd",
        "prices_json",
        "upstreams",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("upstream_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return value.rstrip("/")

    @field_validator("sanitize_entities")
    @classmethod
    def _known_entities(cls, value: str) -> str:
        from .sanitize.policy import parse_entities

        parse_entities(value)
        return value

    @field_validator("sanitize_placeholder")
    @classmethod
    def _valid_placeholder(cls, value: str) -> str:
        from .sanitize.policy import check_placeholder

        return check_placeholder(value)

    @model_validator(mode="after")
    def _margin_below_timeout(self) -> Settings:
        if self.deadline_margin_s >= self.function_timeout_s:
            raise ValueError(
                f"RELAY_DEADLINE_MARGIN_S ({self.deadline_margin_s:g}) must be below RELAY_FUNCTION_TIMEOUT_S "
                f"({self.function_timeout_s:g}): every stream would end at once"
            )
        return self

    @property
    def sanitize_policy(self) -> Policy:
        """The deployment's sanitizer policy: the floor of every key's."""
        from .sanitize.policy import Policy, Side, parse_entities

        entities = parse_entities(self.sanitize_entities)
        return Policy(Side(self.sanitize, entities), Side(self.sanitize_prompt, entities), self.sanitize_placeholder)

    @property
    def allowed_model_set(self) -> frozenset[str] | None:
        """The allow-list, or None when any model is allowed (`*`)."""
        names = frozenset(m.strip() for m in self.allowed_models.split(",") if m.strip())
        return None if "*" in names else names

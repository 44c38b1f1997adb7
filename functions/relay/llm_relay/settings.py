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
    """Relay configuration. Every field maps to an environment variable (`RELAY_` prefix unless aliased)."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", populate_by_name=True)

    port: int = Field(default=8080, alias="PORT", ge=1, le=65535)
    host: str = "127.0.0.1"

    # Upstream LLM provider. Required: without a URL `create_app` refuses to start (ConfigurationError); only
    # `make dev` (llm_relay_dev) fills it in, with the URL of the mock upstream it starts.
    upstream_url: str | None = None
    # The upstream table (`upstreams.table`): a JSON list routing models to upstreams of every kind, with
    # fallbacks. `upstream_url` is its one-upstream shorthand; exactly one of the two is set.
    upstreams: str | None = None
    upstream_api_key: str | None = Field(default=None, repr=False)
    upstream_secret_arn: str | None = None
    upstream_ssm_parameter: str | None = None
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    upstream_idle_timeout_s: float = Field(default=30.0, gt=0)
    upstream_first_token_timeout_s: float = Field(default=120.0, gt=0)
    upstream_max_retries: int = Field(default=2, ge=0, le=10)
    upstream_retry_base_s: float = Field(default=0.2, gt=0)
    upstream_retry_max_s: float = Field(default=4.0, gt=0)
    # Retry the same upstream after a 408, a 504 or a close without an answer: a model may have generated (and its
    # provider billed) for such an attempt, so by default the request fails instead (`attempts_maybe_billed`).
    retry_ambiguous: bool = False

    allowed_models: str = "*"
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_tokens_cap: int = Field(default=32768, gt=0)

    # Telemetry (Powertools' own variable names, so Logger and Metrics read the same values).
    service_name: str = Field(default="llm-relay", alias="POWERTOOLS_SERVICE_NAME")
    metrics_namespace: str = Field(default="LLMRelay", alias="POWERTOOLS_METRICS_NAMESPACE")
    log_level: str = Field(default="INFO", alias="POWERTOOLS_LOG_LEVEL")

    # State.
    table_name: str = "llm-relay"
    dynamodb_endpoint: str | None = None
    aws_region: str | None = Field(default=None, alias="AWS_REGION")  # unset: the boto3 session's region
    auth_cache_ttl_s: float = Field(default=30.0, ge=0)
    dev_key: str | None = Field(default=None, repr=False)

    # Streaming behaviour.
    cancel_poll_interval_s: float = Field(default=0.2, gt=0)
    heartbeat_interval_s: float = Field(default=15.0, gt=0)
    flush_nudge: bool = False
    function_timeout_s: float = Field(default=900.0, gt=0)
    deadline_margin_s: float = Field(default=5.0, ge=0)
    request_ttl_s: int = Field(default=86400, gt=0)
    # SnapStart (template parameter): the web adapter's variable; set, the relay serves its after-restore hook.
    snapstart_after_restore_path: str | None = Field(default=None, alias="AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH")

    # Per-key limits: defaults for keys whose record does not set them (unset or empty: unlimited).
    default_rpm: int | None = Field(default=None, ge=0)
    default_tpm: int | None = Field(default=None, ge=0)
    default_max_concurrent: int | None = Field(default=None, ge=0)
    default_daily_budget_usd: Decimal | None = Field(default=None, ge=0)
    default_monthly_budget_usd: Decimal | None = Field(default=None, ge=0)
    # The ledger (ledger.py): concurrency leases renewed every third of `lease_s`, so a killed relay's slots come
    # back within one lease; bounded DynamoDB waits at admission (then 503) and at finalization (then the
    # request is left to the reconciler).
    lease_s: float = Field(default=60.0, ge=3)
    admission_timeout_s: float = Field(default=2.0, gt=0)
    finalize_timeout_s: float = Field(default=4.0, gt=0)  # under 5 s with telemetry and the close
    admission_fail_open: bool = False  # DynamoDB down at admission: admit anyway (logged loudly) instead of 503
    usage_retention_days: int = Field(default=90, gt=0)
    prices_json: str | None = None  # JSON object or file path; replaces packaged prices model by model
    # Budgets: completion tokens reserved per step (admission, then each extension ahead of need), and what a
    # budgeted key gets for a model without a price: refused (400 model_not_priced) or admitted unbudgeted.
    budget_increment_tokens: int = Field(default=1024, ge=1)
    unpriced_models: Literal["refuse", "allow"] = "refuse"

    # The compliance gate (`sanitize`): the deployment's policy, a floor that a key's own policy can only tighten.
    # Output and prompt each `off`, `redact` or `block`; the entity types (empty: every built-in one); the
    # placeholder a redacted value becomes; the region that phone numbers written without a country code are read in.
    sanitize: Literal["off", "redact", "block"] = "off"
    sanitize_prompt: Literal["off", "redact", "block"] = "off"
    sanitize_entities: str = ""
    sanitize_placeholder: str = "[{entity}]"
    sanitize_phone_region: str = Field(default="US", min_length=2, max_length=2)
    # Amazon Bedrock Guardrails (`ApplyGuardrail`), optional: applied to the prompt and to the output in windows.
    guardrail_id: str | None = None
    guardrail_version: str = "DRAFT"
    guardrail_mode: Literal["sync", "async"] = "sync"
    guardrail_window_chars: int = Field(default=50, ge=10, le=10000)
    guardrail_on_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    guardrail_timeout_s: float = Field(default=2.0, gt=0)
    guardrail_endpoint: str | None = None  # a local Bedrock (tests, `make dev`); unset: the region's endpoint

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

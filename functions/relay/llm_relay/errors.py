"""The relay's exceptions. Every error a client can see is a `RelayError` carrying its HTTP status and
an OpenAI-style body; the mapping to HTTP lives in one place (`app.py` exception handlers). Every exception
that crosses modules is in this tree (module-private ones, such as a cancelled transaction inside the store,
are not). A configuration the relay refuses to start with is a `ConfigurationError`: no client ever sees it,
so it is not a RelayError (no handler can turn it into an HTTP answer).

LLMRelayError
├── ConfigurationError                                        (start-up refused: e.g. no RELAY_UPSTREAM_URL)
├── SSELineTooLong (also a ValueError)                        (an upstream line past the parser's cap)
└── RelayError (every error a client can see)

RelayError
├── InvalidRequest          400  invalid_request_error        (bad JSON, wrong types, bad values)
│   ├── ModelNotPriced      400  invalid_request_error / model_not_priced (budgeted key, RELAY_UNPRICED_MODELS=refuse)
│   ├── PayloadTooLarge     413  invalid_request_error
│   └── PromptRefused       400  invalid_request_error / pii_in_prompt | prompt_blocked (the compliance gate)
├── Unauthorized            401  invalid_request_error / invalid_api_key
├── ModelNotAllowed         403  invalid_request_error / model_not_allowed
├── NotFound                404  invalid_request_error / not_found
├── RequestCancelled        409  invalid_request_error / client_cancelled (cancelled before it started)
├── RateLimited             429  rate_limit_exceeded | budget_exceeded
├── ServiceUnavailable      503  service_unavailable       (state store down, fail closed)
│   ├── StoreUnavailable    503  service_unavailable       (raised by the DynamoDB adapter, `llm_relay.dynamo`)
│   └── GuardrailUnavailable 503 guardrail_unavailable     (raised by the guardrail adapter, `sanitize.guardrail`)
└── UpstreamError           502  upstream_error            (after retries, before the first byte)
    └── UpstreamTimeout     504  upstream_timeout
"""

from __future__ import annotations

from typing import Any


class LLMRelayError(Exception):
    """The root of every exception the relay raises across its modules."""


class SSELineTooLong(LLMRelayError, ValueError):
    """A line grew past the SSE parser's cap without ending: not an event stream the relay will buffer."""


class RelayError(LLMRelayError):
    """A bug in the relay, answered as a 500 `internal_error`: the base of every error a client can see, each
    subclass giving a kind of refusal or failure its HTTP status, error `type` and default `code`."""

    status_code = 500
    error_type = "server_error"
    code: str | None = "internal_error"
    rejection = "internal"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        """OpenAI-style error object: `{"error": {"message", "type", "param", "code"}}`."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class InvalidRequest(RelayError):
    """The request cannot be served as sent (`param` names the field): wrong types or values (`invalid_request`), or
    a body that is not a JSON object (`invalid_json`)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"
    rejection = "invalid_request"


class ModelNotPriced(InvalidRequest):
    """The model has no price, so a budget could not be enforced on it (RELAY_UNPRICED_MODELS=refuse)."""

    code = "model_not_priced"
    rejection = "model_not_priced"


class PayloadTooLarge(InvalidRequest):
    """The body is larger than `RELAY_MAX_BODY_BYTES`, checked while it is read."""

    status_code = 413
    code = "payload_too_large"


class PromptRefused(InvalidRequest):
    """The compliance gate refused the prompt: a value of a blocked entity type (`pii_in_prompt`; the message names
    the types, never the values), or a Bedrock guardrail's intervention (`prompt_blocked`)."""

    code = "pii_in_prompt"
    rejection = "prompt_refused"


class Unauthorized(RelayError):
    """No key (`missing_api_key`), or one that is malformed, unknown, revoked or expired (`invalid_api_key`)."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"
    rejection = "unauthorized"


class ModelNotAllowed(RelayError):
    """The model is outside `RELAY_ALLOWED_MODELS` or the key's own model list."""

    status_code = 403
    error_type = "invalid_request_error"
    code = "model_not_allowed"
    rejection = "model_not_allowed"


class NotFound(RelayError):
    """An unknown route (`not_found`), or a model that does not exist or this key cannot use (`model_not_found`)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"
    rejection = "not_found"


class RequestCancelled(RelayError):
    """The request was cancelled before its answer started."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "client_cancelled"
    rejection = "client_cancelled"


class RateLimited(RelayError):
    """A limit of the key refused the request: its requests or tokens per minute or its concurrent streams
    (`rate_limit_exceeded`), or its daily or monthly budget (`budget_exceeded`). `Retry-After` gives the wait when
    it is known."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    rejection = "rate_limited"


class ServiceUnavailable(RelayError):
    """A service the relay needs is down, and it fails closed rather than serve unchecked: try again shortly."""

    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"
    rejection = "unavailable"


class StoreUnavailable(ServiceUnavailable):
    """DynamoDB could not be reached, or kept failing after botocore's own retries (translated from
    `ClientError`/`BotoCoreError` in one place, `llm_relay.dynamo.client`).

    It sits under ServiceUnavailable because that is what it means at the HTTP edge: the state store being
    down is the service being unavailable (503, try again), never a bug (500). Callers that can do better
    catch it first: admission fails closed with its own message (or open when configured), finalization logs
    the record for replay, the cancel poller tries again, the CLI exits 1.

    `outcome_unknown`: a write may have been applied (the request was sent and no answer came back in time);
    False when DynamoDB answered with an error or was never reached."""

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class GuardrailUnavailable(ServiceUnavailable):
    """Amazon Bedrock Guardrails did not answer in time or answered with an error (translated from `ClientError`,
    `BotoCoreError` and the call's own timeout in one place, `llm_relay.sanitize.guardrail`).

    A 503 at the HTTP edge when it refuses a prompt (fail closed). The output stage catches it and, as configured,
    ends the stream (fail closed) or releases the text unassessed (fail open). `reason`: the AWS error code, the
    botocore exception's name or `timeout`; never the text that was being assessed."""

    code = "guardrail_unavailable"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class UpstreamError(RelayError):
    """The upstream failed before anything was sent to the client (after retries). Its own rate limit is a 429
    (`upstream_rate_limited`), its refusal of the request a 400 or 404 (`upstream_invalid_request`)."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"
    rejection = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.upstream_status = upstream_status
        self.retries = 0
        self.failures: dict[str, int] = {}
        self.fallback_ok = False  # no attempt can have reached a model: another upstream may be tried (routing)
        self.upstream = ""  # the name of the upstream that failed last


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time (`upstream_timeout`), or the relay's own time limit came first
    (`deadline`)."""

    status_code = 504
    code = "upstream_timeout"


class ConfigurationError(LLMRelayError):
    """The settings would make the relay do the wrong thing silently (e.g. no upstream to send requests to), so
    it refuses to start. The message names the environment variable to set."""

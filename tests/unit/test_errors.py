"""The exception hierarchy: statuses, OpenAI-style bodies."""

from __future__ import annotations

import pytest

from llm_relay.errors import (
    InvalidRequest,
    ModelNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RelayError,
    ServiceUnavailable,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
)


@pytest.mark.parametrize(
    ("cls", "status", "error_type", "code"),
    [
        (RelayError, 500, "server_error", "internal_error"),
        (InvalidRequest, 400, "invalid_request_error", "invalid_request"),
        (PayloadTooLarge, 413, "invalid_request_error", "payload_too_large"),
        (Unauthorized, 401, "invalid_request_error", "invalid_api_key"),
        (ModelNotAllowed, 403, "invalid_request_error", "model_not_allowed"),
        (NotFound, 404, "invalid_request_error", "not_found"),
        (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
        (ServiceUnavailable, 503, "server_error", "service_unavailable"),
        (UpstreamError, 502, "upstream_error", "upstream_error"),
        (UpstreamTimeout, 504, "upstream_error", "upstream_timeout"),
    ],
)
def test_status_and_body(cls: type[RelayError], status: int, error_type: str, code: str) -> None:
    # GIVEN an error with a message
    error = cls("Something went wrong.")
    # THEN its status and OpenAI-style body are exact
    assert error.status_code == status
    assert error.body() == {
        "error": {"message": "Something went wrong.", "type": error_type, "param": None, "code": code}
    }
    assert str(error) == "Something went wrong."
    assert error.headers == {}


def test_every_error_is_a_relay_error() -> None:
    for cls in (
        InvalidRequest,
        PayloadTooLarge,
        Unauthorized,
        ModelNotAllowed,
        NotFound,
        RateLimited,
        ServiceUnavailable,
        UpstreamError,
        UpstreamTimeout,
    ):
        assert issubclass(cls, RelayError)
    assert issubclass(PayloadTooLarge, InvalidRequest)
    assert issubclass(UpstreamTimeout, UpstreamError)


def test_param_and_code_override() -> None:
    error = InvalidRequest("Bad 'max_tokens'.", code="too_big", param="max_tokens")
    assert error.body() == {
        "error": {
            "message": "Bad 'max_tokens'.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "too_big",
        }
    }


def test_code_override_is_per_instance() -> None:
    overridden = RateLimited("Over budget.", code="budget_exceeded")
    assert overridden.code == "budget_exceeded"
    assert RateLimited("Slow down.").code == "rate_limit_exceeded"
    assert RateLimited("Over budget.", code="budget_exceeded").body()["error"]["code"] == "budget_exceeded"


def test_headers_are_per_instance() -> None:
    first = RateLimited("a")
    first.headers["retry-after"] = "3"
    assert RateLimited("b").headers == {}


def test_upstream_error_carries_history() -> None:
    error = UpstreamError("Upstream error 503: overloaded", upstream_status=503, code="upstream_overloaded")
    assert error.upstream_status == 503
    assert error.retries == 0
    assert error.failures == {}
    assert error.param is None
    assert error.body()["error"]["code"] == "upstream_overloaded"
    assert UpstreamTimeout("t").upstream_status is None

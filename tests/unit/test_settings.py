"""Settings validation: a configuration that cannot work is refused at start-up, with a message naming it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llm_relay.settings import Settings


def test_deadline_margin_must_be_below_the_function_timeout() -> None:
    with pytest.raises(ValidationError, match="RELAY_DEADLINE_MARGIN_S"):
        Settings(function_timeout_s=3, deadline_margin_s=5)


def test_empty_limit_defaults_are_unset_and_models_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_DEFAULT_RPM", "")
    monkeypatch.setenv("RELAY_ALLOWED_MODELS", " gpt-4o , gpt-4o-mini,")
    monkeypatch.setenv("RELAY_UPSTREAM_URL", "https://api.example.com/v1/")
    settings = Settings()
    assert settings.default_rpm is None
    assert settings.allowed_model_set == frozenset({"gpt-4o", "gpt-4o-mini"})
    assert settings.upstream_url == "https://api.example.com/v1"
    assert Settings(allowed_models="*").allowed_model_set is None

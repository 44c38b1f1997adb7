"""The upstream provider's key: the forms a Secrets Manager secret or an SSM parameter may hold, and which
source the provider reads (Powertools Parameters replaced by fakes: no AWS call)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aws_lambda_powertools.utilities import parameters

from llm_relay.settings import Settings
from llm_relay.upstream_key import CACHE_SECONDS, UpstreamKeyProvider, _api_key_from_secret


@pytest.mark.parametrize(
    ("secret", "key"),
    [
        # the bare key, as pasted into the console (a trailing newline included)
        ("sk-abc123", "sk-abc123"),
        ("  sk-abc123\n", "sk-abc123"),
        # JSON with an api_key field (the key/value form of the console), trimmed
        ('{"api_key": "sk-abc123"}', "sk-abc123"),
        ('{"api_key": " sk-abc123\\n", "org": "o-1"}', "sk-abc123"),
        ('  {"api_key": "sk-abc123"}\n', "sk-abc123"),
        # JSON without a usable api_key: the whole value, as written (not guessed at)
        ('{"key": "sk-abc123"}', '{"key": "sk-abc123"}'),
        ('{"api_key": 12345}', '{"api_key": 12345}'),
        ('{"api_key": null}', '{"api_key": null}'),
        # a bare key that happens to parse as JSON stays the key it is
        ("12345", "12345"),
        ('"sk-abc123"', '"sk-abc123"'),
        ("[1, 2]", "[1, 2]"),
        # broken JSON is a bare value
        ('{"api_key": "sk-abc', '{"api_key": "sk-abc'),
    ],
)
def test_secret_forms(secret: str, key: str) -> None:
    assert _api_key_from_secret(secret) == key


class FakeParameters:
    """Records what Powertools Parameters was asked for; answers with a fixed value."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def get_secret(self, name: str, **kwargs: Any) -> str:
        self.calls.append(("secret", name, kwargs))
        return self.value

    def get_parameter(self, name: str, **kwargs: Any) -> str:
        self.calls.append(("parameter", name, kwargs))
        return self.value


@pytest.fixture
def fake_parameters(monkeypatch: pytest.MonkeyPatch) -> FakeParameters:
    for name in ("RELAY_UPSTREAM_API_KEY", "RELAY_UPSTREAM_SECRET_ARN", "RELAY_UPSTREAM_SSM_PARAMETER"):
        monkeypatch.delenv(name, raising=False)  # only what each case configures
    fake = FakeParameters('{"api_key": "sk-from-aws"}')
    monkeypatch.setattr(parameters, "get_secret", fake.get_secret)
    monkeypatch.setattr(parameters, "get_parameter", fake.get_parameter)
    return fake


def _key(**settings: Any) -> str | None:
    return anyio.run(UpstreamKeyProvider(Settings(**settings)))


ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:upstream-AbCdEf"


@pytest.mark.parametrize(
    ("settings", "key", "calls"),
    [
        # a local key wins, trimmed, and nothing is fetched
        ({"upstream_api_key": " sk-local \n", "upstream_secret_arn": ARN}, "sk-local", []),
        # Secrets Manager: the JSON form is unwrapped, cached by Powertools
        ({"upstream_secret_arn": ARN}, "sk-from-aws", [("secret", ARN, {"max_age": CACHE_SECONDS})]),
        # SSM SecureString: decrypted, taken as it is (trimmed: no JSON unwrapping)
        (
            {"upstream_ssm_parameter": "/relay/upstream-key"},
            '{"api_key": "sk-from-aws"}',
            [("parameter", "/relay/upstream-key", {"decrypt": True, "max_age": CACHE_SECONDS})],
        ),
        # the secret is preferred when both are configured
        (
            {"upstream_secret_arn": ARN, "upstream_ssm_parameter": "/relay/upstream-key"},
            "sk-from-aws",
            [("secret", ARN, {"max_age": CACHE_SECONDS})],
        ),
        # nothing configured: no key (a local mock upstream needs none)
        ({}, None, []),
    ],
)
def test_key_sources(
    fake_parameters: FakeParameters, settings: dict[str, Any], key: str | None, calls: list[Any]
) -> None:
    assert _key(**settings) == key
    assert fake_parameters.calls == calls

"""The local Bedrock server's ApplyGuardrail, as the guardrail tests use it: served on loopback with a rule set, its
recorded calls by guardrail (and source), and static credentials for botocore's signing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from llm_relay_dev.bedrock_local import BedrockLocalConfig, BedrockLocalState, create_bedrock_app
from llm_relay_dev.guardrail_local import GuardrailCall, GuardrailRule
from tests.servers import serve


@dataclass
class LocalBedrock:
    base: str
    state: BedrockLocalState

    def calls(self, guardrail: str, source: str | None = None) -> list[GuardrailCall]:
        """The calls made to one guardrail (each test uses its own id), of one source (`INPUT`, `OUTPUT`) or all."""
        return [
            call
            for call in self.state.guardrail_calls
            if call.guardrail == guardrail and (source is None or call.source == source)
        ]


@contextmanager
def local_bedrock(rules: Iterable[GuardrailRule], slow_ms: float) -> Iterator[LocalBedrock]:
    app = create_bedrock_app(BedrockLocalConfig(guardrail_rules=tuple(rules), guardrail_slow_ms=slow_ms))
    with serve(app) as base:
        yield LocalBedrock(base, app.state.bedrock)


def use_static_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore signs with these: no profile, no session token from the machine's environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)

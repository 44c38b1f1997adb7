"""The upstream provider's key: from `RELAY_UPSTREAM_API_KEY` locally; on AWS from Secrets Manager
(`RELAY_UPSTREAM_SECRET_ARN`) or an SSM SecureString (`RELAY_UPSTREAM_SSM_PARAMETER`) through Powertools
Parameters, which caches it (5 minutes) so rotation is picked up without a cold start."""

from __future__ import annotations

import json

import anyio.to_thread

from .settings import Settings

CACHE_SECONDS = 300


class UpstreamKeyProvider:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def __call__(self) -> str | None:
        if self._settings.upstream_api_key:
            return self._settings.upstream_api_key.strip()
        if self._settings.upstream_secret_arn or self._settings.upstream_ssm_parameter:
            return await anyio.to_thread.run_sync(self._fetch)
        return None

    def _fetch(self) -> str:
        from aws_lambda_powertools.utilities import parameters

        if self._settings.upstream_secret_arn:
            value = parameters.get_secret(self._settings.upstream_secret_arn, max_age=CACHE_SECONDS)
            return _api_key_from_secret(str(value))
        assert self._settings.upstream_ssm_parameter
        value = parameters.get_parameter(self._settings.upstream_ssm_parameter, decrypt=True, max_age=CACHE_SECONDS)
        return str(value).strip()


def _api_key_from_secret(value: str) -> str:
    """A secret may hold the bare key or JSON `{"api_key": "..."}`."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value.strip()
    if isinstance(parsed, dict) and isinstance(parsed.get("api_key"), str):
        return str(parsed["api_key"]).strip()
    return value.strip()

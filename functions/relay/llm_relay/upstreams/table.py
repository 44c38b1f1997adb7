"""The upstream table (pure): `RELAY_UPSTREAMS`, a JSON list of upstreams, validated at start-up, and the
choice of upstream for a model.

    [{"name": "local", "kind": "ollama", "url": "http://127.0.0.1:11434", "models": ["llama*"]},
     {"name": "openai", "kind": "openai", "url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY",
      "models": ["*"], "fallbacks": ["local"]}]

A model goes to the first upstream one of whose glob patterns fits it (case-sensitive); that upstream's
`fallbacks` follow in order. Each upstream sends its `rewrite` as the model name when set, else the client's.
`RELAY_UPSTREAM_URL` is the one-upstream shorthand: an `openai` upstream named "default" for every model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigurationError, ModelNotAllowed

Kind = Literal["openai", "ollama", "ndjson", "bedrock"]
HTTP_KINDS = frozenset({"openai", "ollama", "ndjson"})
DEFAULT_NAME = "default"
RELAY_KEY_ENV = "RELAY_UPSTREAM_API_KEY"  # as an `api_key_env`: the relay's own key (the variable, a secret, SSM)


class UpstreamSpec(BaseModel):
    """One entry of the table. `url`: for `openai` the base ending in /v1, for `ollama` the server root, for
    `ndjson` the endpoint itself; for `bedrock` optional (an endpoint other than the region's, e.g. a local
    server). `fields`: the field paths of an `ndjson` upstream's lines (defaults: this relay's own NDJSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Kind
    url: str | None = None
    region: str | None = Field(default=None, min_length=1)
    api_key_env: str | None = Field(default=None, min_length=1)
    models: tuple[str, ...] = ()  # empty: a fallback only, never chosen for a model of its own
    rewrite: str | None = Field(default=None, min_length=1, max_length=256)
    fallbacks: tuple[str, ...] = ()
    fields: dict[str, str] | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {value!r})")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _fits_kind(self) -> UpstreamSpec:
        if self.kind in HTTP_KINDS and self.url is None:
            raise ValueError(f"upstream {self.name!r} of kind {self.kind!r} needs a url")
        if self.kind == "bedrock" and self.api_key_env is not None:
            raise ValueError(f"upstream {self.name!r}: bedrock signs with the function's IAM role, not an api_key_env")
        if self.fields is not None and self.kind != "ndjson":
            raise ValueError(f"upstream {self.name!r}: fields apply to the ndjson kind only")
        if self.name in self.fallbacks:
            raise ValueError(f"upstream {self.name!r} lists itself as a fallback")
        if len(set(self.fallbacks)) != len(self.fallbacks):
            raise ValueError(f"upstream {self.name!r} lists a fallback twice")
        if self.api_key_env is not None and self.api_key_env.upper().startswith("AWS_"):
            # the function's own AWS credentials must never leave as some upstream's Bearer key
            raise ValueError(f"upstream {self.name!r}: api_key_env may not name an AWS_ variable")
        return self

    def matches(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.models)

    def model_for(self, model: str) -> str:
        return self.rewrite or model


@dataclass(frozen=True, slots=True)
class Route:
    """One upstream to try for a request, and the model name to send it."""

    spec: UpstreamSpec
    model: str

    @property
    def name(self) -> str:
        return self.spec.name


class UpstreamTable:
    """The validated table: `routes(model)` is the ordered list of upstreams to try for a model."""

    def __init__(self, specs: list[UpstreamSpec]) -> None:
        if not specs:
            raise ConfigurationError("RELAY_UPSTREAMS is empty: the relay has no upstream to send requests to")
        self.specs = specs
        self._by_name = {spec.name: spec for spec in specs}
        if len(self._by_name) != len(specs):
            names = [spec.name for spec in specs]
            twice = sorted({name for name in names if names.count(name) > 1})
            raise ConfigurationError(f"RELAY_UPSTREAMS: upstream names must be unique ({', '.join(twice)} repeats)")
        fallbacks = {name for spec in specs for name in spec.fallbacks}
        for spec in specs:
            unknown = [name for name in spec.fallbacks if name not in self._by_name]
            if unknown:
                raise ConfigurationError(
                    f"RELAY_UPSTREAMS: upstream {spec.name!r} falls back to unknown upstream(s) {', '.join(unknown)}"
                )
            if not spec.models and spec.name not in fallbacks:
                raise ConfigurationError(
                    f"RELAY_UPSTREAMS: upstream {spec.name!r} serves no model and is no upstream's fallback"
                )

    def routes(self, model: str) -> list[Route]:
        """The upstream for `model` and its fallbacks; `ModelNotAllowed` (a 400 before anything is counted) when
        no upstream serves it."""
        primary = next((spec for spec in self.specs if spec.matches(model)), None)
        if primary is None:
            raise ModelNotAllowed(f"No upstream of this relay serves the model '{model}'.", param="model")
        chain = [primary, *(self._by_name[name] for name in primary.fallbacks)]
        return [Route(spec, spec.model_for(model)) for spec in chain]

    def serves(self, model: str) -> bool:
        return any(spec.matches(model) for spec in self.specs)

    def literal_models(self) -> list[str]:
        """The model names the table spells out (patterns without a glob character), for `/v1/models`."""
        return [p for spec in self.specs for p in spec.models if not any(c in p for c in "*?[")]


def load_table(
    upstreams_json: str | None,
    upstream_url: str | None,
    environ: Mapping[str, str] = os.environ,
    *,
    relay_key_stored: bool = False,
) -> UpstreamTable:
    """The table from `RELAY_UPSTREAMS`, or the shorthand from `RELAY_UPSTREAM_URL`; `ConfigurationError` naming
    the variable and the entry for anything that would route a request wrongly. Exactly one must be set.
    `relay_key_stored`: the relay's key is in Secrets Manager or SSM, so an entry whose `api_key_env` is
    `RELAY_UPSTREAM_API_KEY` has a key even with that variable unset."""
    if upstreams_json and upstream_url:
        raise ConfigurationError(
            "RELAY_UPSTREAMS and RELAY_UPSTREAM_URL are both set: set one (the URL is the one-upstream shorthand)"
        )
    if not upstreams_json:
        if not upstream_url:
            raise ConfigurationError(
                "RELAY_UPSTREAM_URL is not set: the relay has no upstream to send requests to "
                "(set it to the provider's OpenAI-compatible base URL ending in /v1, or set RELAY_UPSTREAMS; "
                "`make dev` runs a mock upstream)"
            )
        shorthand = UpstreamSpec(
            name=DEFAULT_NAME, kind="openai", url=upstream_url, models=("*",), api_key_env=RELAY_KEY_ENV
        )
        return UpstreamTable([shorthand])
    table = UpstreamTable(parse_specs(upstreams_json))
    for spec in table.specs:
        stored = relay_key_stored and spec.api_key_env == RELAY_KEY_ENV
        if spec.api_key_env is not None and not stored and not environ.get(spec.api_key_env, "").strip():
            raise ConfigurationError(
                f"RELAY_UPSTREAMS: upstream {spec.name!r} takes its key from {spec.api_key_env}, which is not set"
            )
    return table


def parse_specs(text: str) -> list[UpstreamSpec]:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"RELAY_UPSTREAMS is not valid JSON ({exc})") from None
    except RecursionError:  # the parser recurses once per level: no upstream table nests that deep
        raise ConfigurationError("RELAY_UPSTREAMS is nested too deeply to be an upstream table") from None
    if not isinstance(raw, list):
        raise ConfigurationError("RELAY_UPSTREAMS must be a JSON list of upstream objects")
    specs = []
    for index, entry in enumerate(raw):
        try:
            specs.append(UpstreamSpec.model_validate(entry))
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            detail = f"{where}: {first['msg']}" if where else first["msg"]
            raise ConfigurationError(f"RELAY_UPSTREAMS[{index}]: {detail}") from None
    return specs

"""Chat request validation (pure): the shape the relay accepts, checked before anything goes upstream.

Unknown top-level fields are kept and forwarded (providers have their own parameters); known fields are
type-checked strictly, as OpenAI does (`"max_tokens": "5"` is an error, not 5).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from .errors import InvalidRequest, ModelNotAllowed
from .validation import check_response_format

# Service tiers billed at most at the standard rates the relay prices with (`flex` is cheaper: a budget is never
# overspent by it); `priority` and `scale` cost more or are billed apart.
PRICED_TIERS = frozenset({"auto", "default", "flex"})

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=8)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    # Spend attribution (`attribution.py` checks their bounds): the end user, and tags in OpenAI's `metadata` shape.
    user: str | None = None
    metadata: dict[str, Any] | None = None
    # The request in the client's own API, where an upstream may be sent it as it is (a Responses request to an
    # `openai` upstream); never part of the chat body. None: a chat request, or one only the translation may send.
    _native: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def native(self) -> dict[str, Any] | None:
        return self._native

    def with_native(self, body: dict[str, Any]) -> ChatRequest:
        """This request, carrying the client's own (validated) request in its API."""
        copy = self.model_copy()
        copy._native = body
        return copy

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def messages_as_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def upstream_body(self) -> dict[str, Any]:
        """The body sent upstream: always streamed, always with usage, whatever the client asked. `user` goes along
        (providers use it for abuse monitoring); `metadata` is the relay's attribution and stays here unless the
        client asked the provider to store the completion (`store: true`, the only case where OpenAI keeps it; a
        provider that stores nothing may refuse the field)."""
        body = self.model_dump(exclude_none=True)
        if (self.model_extra or {}).get("store") is not True:
            body.pop("metadata", None)
        body["stream"] = True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body


def parse_chat_request(raw: bytes, *, max_tokens_cap: int, allowed_models: frozenset[str] | None) -> ChatRequest:
    """Parse and validate a request body, raising `InvalidRequest` / `ModelNotAllowed` with a message a
    client can act on."""
    return validate_chat_request(load_object(raw), max_tokens_cap=max_tokens_cap, allowed_models=allowed_models)


def load_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or `InvalidRequest` (`invalid_json`) saying why not."""
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise InvalidRequest("Request body is nested too deeply.", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json")
    return payload


def validate_chat_request(
    payload: dict[str, Any], *, max_tokens_cap: int, allowed_models: frozenset[str] | None
) -> ChatRequest:
    """A chat request's JSON object validated (as OpenAI does: strict types, a message naming the field); another
    API's request translated into this form is validated here too."""
    try:
        request = ChatRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        param = _param_path(payload, first["loc"])
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param) from None
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(request, name)
        if value is not None and value > max_tokens_cap:
            raise InvalidRequest(f"'{name}' is {value}; this relay allows at most {max_tokens_cap}.", param=name)
    tier = (request.model_extra or {}).get("service_tier")
    if tier is not None and (not isinstance(tier, str) or tier not in PRICED_TIERS):
        raise InvalidRequest(
            f"'service_tier' {tier!r} is not supported: this relay prices, budgets and records every request at the "
            "provider's standard rates, which a dearer tier would exceed. Use 'auto', 'default' or 'flex'.",
            param="service_tier",
        )
    if allowed_models is not None and request.model not in allowed_models:
        raise ModelNotAllowed(f"The model '{request.model}' is not allowed on this relay.", param="model")
    check_response_format((request.model_extra or {}).get("response_format"))  # a schema no answer can be checked by
    return request


def _param_path(payload: Any, loc: tuple[int | str, ...]) -> str:
    """The error's location as the client wrote it. pydantic adds the names of the union branches it tried
    (`messages.0.content.str`); those are not fields, so the path stops where the request does."""
    parts: list[str] = []
    node = payload
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            parts.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            parts.append(str(part))
            node = node[part] if 0 <= part < len(node) else None
        else:
            break
    return ".".join(parts) or ".".join(str(part) for part in loc)

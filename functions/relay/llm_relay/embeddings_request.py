"""Embeddings request validation (pure): the body of `POST /v1/embeddings` as OpenAI defines it, checked before
anything goes upstream; with what admission needs before the upstream counts (`estimate_input_tokens`) and what
the compliance gate reads (`texts`).

`input` is a string, a list of strings, a list of token ids (one input) or a list of lists of token ids. OpenAI
refuses an empty string, an empty list and more than 2048 inputs; so does the relay, naming the offending item.

Fields OpenAI's embeddings API does not define are kept (`extra`), as the chat request keeps them: providers have
their own parameters (`input_type`, `truncate_prompt_tokens`), and the `openai` kind forwards them. The `ollama`
kind refuses them, naming the field (`upstreams.embeddings`): Ollama ignores what it does not know, and an answer
that silently ignored a parameter is worse than a 400. `metadata` is kept for attribution and never sent upstream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .chat_request import load_object
from .errors import InvalidRequest, ModelNotAllowed
from .metering import CHARS_PER_TOKEN

__all__ = [
    "MAX_INPUTS",
    "EmbeddingsRequest",
    "estimate_input_tokens",
    "parse_embeddings_request",
    "texts",
    "validate_embeddings_request",
]

MAX_INPUTS: Final = 2048  # OpenAI's cap on the inputs of one request
MAX_MODEL_CHARS: Final = 256
_KNOWN: Final = frozenset({"model", "input", "encoding_format", "dimensions", "user", "metadata"})
_INPUT_SHAPES: Final = "a string, a list of strings, a list of token ids or a list of lists of token ids"

EncodingFormat = Literal["float", "base64"]
Item = str | tuple[int, ...]
"""One input: a text, or the token ids of one text."""


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """A validated embeddings request. `input` is kept as the client sent it (the `openai` kind forwards it as it
    is); `items` is the same as one input per element. Optional fields are None when the client did not send
    them, so an upstream body carries only what the client asked for."""

    model: str
    input: str | tuple[str, ...] | tuple[int, ...] | tuple[tuple[int, ...], ...]
    items: tuple[Item, ...] = field(repr=False)
    encoding_format: EncodingFormat | None = None
    dimensions: int | None = None
    user: str | None = None
    metadata: Any = field(default=None, repr=False)  # validated by attribution, never sent upstream
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)  # fields OpenAI's API does not define

    @property
    def base64(self) -> bool:
        """The client asked for base64 (little-endian float32) vectors rather than lists of floats."""
        return self.encoding_format == "base64"

    @property
    def tokens(self) -> bool:
        """The inputs are token ids, not texts."""
        return bool(self.items) and not isinstance(self.items[0], str)


def parse_embeddings_request(raw: bytes, *, allowed_models: frozenset[str] | None) -> EmbeddingsRequest:
    """Parse and validate a request body, raising `InvalidRequest` (naming the field in `param`) or
    `ModelNotAllowed` with a message a client can act on."""
    return validate_embeddings_request(load_object(raw), allowed_models=allowed_models)


def validate_embeddings_request(
    payload: Mapping[str, Any], *, allowed_models: frozenset[str] | None
) -> EmbeddingsRequest:
    """An embeddings request's JSON object validated: strict types (`"dimensions": "8"` is an error, not 8)."""
    model = _model(payload)
    if "input" not in payload:
        raise InvalidRequest("Missing required field 'input'.", param="input")
    client_input, items = _input(payload["input"])
    request = EmbeddingsRequest(
        model=model,
        input=client_input,
        items=items,
        encoding_format=_encoding_format(payload.get("encoding_format")),
        dimensions=_dimensions(payload.get("dimensions")),
        user=_optional_str(payload, "user"),
        metadata=payload.get("metadata"),
        extra={name: value for name, value in payload.items() if name not in _KNOWN},
    )
    if allowed_models is not None and model not in allowed_models:
        raise ModelNotAllowed(f"The model '{model}' is not allowed on this relay.", param="model")
    return request


def estimate_input_tokens(request: EmbeddingsRequest) -> int:
    """The input's size in tokens before the upstream counts it, erring high (admission reserves it): token ids
    exactly; a text a token per four ASCII characters rounded up, one per other character (CJK text is about a
    token a character) and one more for the tokenizer's own markers."""
    total = 0
    for item in request.items:
        if isinstance(item, str):
            ascii_chars = len(item.encode("ascii", "ignore"))
            total += math.ceil(ascii_chars / CHARS_PER_TOKEN) + (len(item) - ascii_chars) + 1
        else:
            total += len(item)
    return max(1, total)


def texts(request: EmbeddingsRequest) -> list[str]:
    """The texts to embed, for the compliance gate. Token ids carry no text the gate can read (there is no
    tokenizer here): a request of token ids gives an empty list, and the caller decides whether a gate that
    must see every prompt lets it through."""
    return [item for item in request.items if isinstance(item, str)]


def _invalid(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {why}.", param=param)


def _model(payload: Mapping[str, Any]) -> str:
    if "model" not in payload:
        raise InvalidRequest("Missing required field 'model'.", param="model")
    model = payload["model"]
    if not isinstance(model, str) or not 1 <= len(model) <= MAX_MODEL_CHARS:
        raise _invalid("model", f"expected a string of 1 to {MAX_MODEL_CHARS} characters")
    return model


def _input(value: Any) -> tuple[Any, tuple[Item, ...]]:
    """The input as sent (lists as tuples) and as one item per input."""
    if isinstance(value, str):
        return value, (_text("input", value),)
    if not isinstance(value, list) or not value:
        raise _invalid("input", f"expected {_INPUT_SHAPES}, not empty")
    if _is_token(value[0]):
        ids = _token_ids("input", value)  # one input, as token ids
        return ids, (ids,)
    if len(value) > MAX_INPUTS:
        raise _invalid("input", f"at most {MAX_INPUTS} inputs in one request, got {len(value)}")
    if isinstance(value[0], str):
        strings = tuple(_text(f"input.{i}", item) for i, item in enumerate(value))
        return strings, strings
    if not isinstance(value[0], list):
        raise _invalid("input.0", "expected a string, a token id or a list of token ids")
    lists = tuple(_token_ids(f"input.{i}", item) for i, item in enumerate(value))
    return lists, lists


def _text(param: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid(param, "expected a string (every input of a list is of the same kind)")
    if not value:
        raise _invalid(param, "an input cannot be an empty string")
    return value


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_ids(param: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _invalid(param, "expected a list of token ids (every input of a list is of the same kind)")
    if not value:
        raise _invalid(param, "an input cannot be an empty list of token ids")
    for i, token in enumerate(value):
        if not _is_token(token) or token < 0:
            raise _invalid(f"{param}.{i}", "expected a token id (an integer >= 0)")
    return tuple(value)


def _encoding_format(value: Any) -> EncodingFormat | None:
    if value is None:
        return None
    if value == "float":
        return "float"
    if value == "base64":
        return "base64"
    raise _invalid("encoding_format", "expected 'float' or 'base64'")


def _dimensions(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_token(value) or value < 1:
        raise _invalid("dimensions", "expected an integer >= 1")
    return int(value)


def _optional_str(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(name, "expected a string")
    return value

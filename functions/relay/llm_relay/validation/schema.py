"""JSON Schema for structured outputs (`response_format` `json_schema`), with jsonschema: the client's schema checked
before admission (`schema_problem`), an answer validated against it at its end (`schema_errors`). Imported only when
a request carries a schema: jsonschema costs a cold start about 70 ms.

The schema is untrusted input, so what it can make the relay do is bounded:
- its size: at most `MAX_SCHEMA_BYTES` of compact JSON (checking a schema is linear in it, about 2 s for 1 MiB, and
  happens before admission);
- its draft: the one its `$schema` names (2020-12 when it names none; 2019-09, 7, 6 and 4 too), checked against that
  draft's metaschema, its patterns compiled by the `regex` module, the engine that will run them;
- its references: resolved inside the document only. Nothing is ever retrieved (jsonschema's default registry would
  fetch a remote `$ref`); a reference that plainly points outside is refused up front;
- its regular expressions: run by the `regex` module with a timeout, which releases the GIL while it matches. Python's
  `re`, which jsonschema uses, holds the GIL for a whole match, so one catastrophic pattern would stall every stream
  of the process past any deadline. `pattern`, `patternProperties` and `additionalProperties` (which matches the
  `patternProperties` too) are therefore the relay's own here; `unevaluatedProperties` next to `patternProperties`
  would still match them with `re` inside jsonschema, so a schema with both is refused;
- `format` is an annotation, not asserted (no format checker, as 2020-12 has it by default): no format's parser runs
  on the answer;
- its time: every keyword checks the caller's deadline before it runs, so a validation past it stops (`OutOfTime`).
"""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import referencing
import regex
from jsonschema import (
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
    FormatChecker,
    validators,
)
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator

MAX_SCHEMA_BYTES = 64 * 1024
_DRAFTS: dict[str, type[Validator]] = {
    "https://json-schema.org/draft/2020-12/schema": Draft202012Validator,
    "https://json-schema.org/draft/2019-09/schema": Draft201909Validator,
    "http://json-schema.org/draft-07/schema": Draft7Validator,
    "http://json-schema.org/draft-06/schema": Draft6Validator,
    "http://json-schema.org/draft-04/schema": Draft4Validator,
}
_REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef")
_IDS = ("$id", "id")
_NO_RETRIEVAL: referencing.Registry[Any] = referencing.Registry()  # resolves what the document holds, fetches nothing
_VALUE_CHARS = 60  # a schema value quoted in an error, at most

Keyword = Callable[[Any, Any, Any, Any], Iterator[ValidationError] | None]


class OutOfTime(Exception):
    """The validation's deadline passed (between two keywords, or inside a pattern's match)."""


_deadline = threading.local()  # each worker thread's current deadline (monotonic), read by every keyword


# --- before admission -------------------------------------------------------------------------------------------
def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why an answer cannot be validated against `schema` (a sentence for the 400), or None when it can."""
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_BYTES:
        return f"the schema is {size} bytes of JSON; the relay validates answers against at most {MAX_SCHEMA_BYTES}."
    draft = _draft(schema)
    if draft is None:
        return (
            "'$schema' names a draft the relay does not validate: leave it out (2020-12), or name 2020-12, 2019-09, "
            "draft-07, draft-06 or draft-04."
        )
    metaschema = draft(draft.META_SCHEMA, format_checker=_PATTERNS, registry=_NO_RETRIEVAL)
    try:
        error = best_match(metaschema.iter_errors(schema))
    except RecursionError:
        return "the schema is nested too deeply."
    if error is not None:
        return f"not a valid JSON schema: {_quote(error.message, 160)} (at {_pointer(error.path)})."
    return _unsupported(schema)


def _unsupported(schema: dict[str, Any]) -> str | None:
    pairs = list(_pairs(schema))
    keys = {key for key, _ in pairs}
    if "unevaluatedProperties" in keys and "patternProperties" in keys:
        return "'unevaluatedProperties' together with 'patternProperties' is not supported by the relay's validator."
    ids = [value.split("#", 1)[0] for key, value in pairs if key in _IDS and isinstance(value, str)]
    for key, value in pairs:
        if key in _REFERENCES and isinstance(value, str) and not _inside(value.split("#", 1)[0], ids):
            return f"'{key}' '{_quote(value, 80)}' does not point inside the schema: the relay retrieves no schemas."
    return None


def _inside(target: str, ids: Sequence[str]) -> bool:
    """Whether a reference's document part names this document: none (a fragment), one of its `$id`s (written either
    way, relative or absolute), or a metaschema. A reference let through wrongly fails at validation, unfetched."""
    if not target or target.rstrip("#") in _DRAFTS:
        return True
    return any(ident and (ident == target or ident.endswith("/" + target) or target.endswith(ident)) for ident in ids)


def _pairs(schema: Any) -> Iterator[tuple[str, Any]]:
    """Every key and value of every object in the document, walked without recursion (it may be deeply nested)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                yield str(key), value
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _draft(schema: Mapping[str, Any]) -> type[Validator] | None:
    uri = schema.get("$schema")
    if uri is None:
        return Draft202012Validator
    return _DRAFTS.get(uri.rstrip("#")) if isinstance(uri, str) else None


_PATTERNS = FormatChecker(formats=())  # only `regex`, by the engine that will run the patterns


@_PATTERNS.checks("regex", raises=regex.error)
def _compiles(instance: object) -> bool:
    if isinstance(instance, str):
        _compiled(instance)
    return True


# --- at the end of the answer -----------------------------------------------------------------------------------
def schema_errors(schema: dict[str, Any], instance: Any, *, deadline: float, limit: int) -> list[str]:
    """The first `limit` ways `instance` fails `schema` (a schema `schema_problem` accepted), each as the location of
    the failing keyword in the schema and its value; raises `OutOfTime` past `deadline` (monotonic)."""
    validator = _relay_validator(_draft(schema) or Draft202012Validator)(schema, registry=_NO_RETRIEVAL)
    _deadline.at = deadline
    try:
        return [_describe(error) for error in islice(validator.iter_errors(instance), limit)]
    finally:
        _deadline.at = math.inf


@functools.cache
def _relay_validator(draft: type[Validator]) -> type[Validator]:
    """The draft's validator with the relay's pattern keywords, every keyword checking the deadline first."""
    own: dict[str, Keyword] = {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    }
    keywords = {name: _bounded(own.get(name) or keyword) for name, keyword in draft.VALIDATORS.items()}
    extend: Callable[..., type[Validator]] = validators.extend  # untyped in its stubs
    return extend(draft, keywords)


def _bounded(keyword: Keyword) -> Keyword:
    def bounded(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError] | None:
        if time.monotonic() > getattr(_deadline, "at", math.inf):
            raise OutOfTime
        return keyword(validator, value, instance, schema)

    return bounded


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError("does not match the pattern")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, allowed: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    named = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [key for key in instance if key not in named and not any(_search(p, key) for p in patterns)]
    if validator.is_type(allowed, "object"):
        for key in extras:
            yield from validator.descend(instance[key], allowed, path=key)
    elif not allowed and extras:
        yield ValidationError("additional properties are not allowed")


def _search(pattern: str, text: str) -> bool:
    remaining = getattr(_deadline, "at", math.inf) - time.monotonic()
    if remaining <= 0:
        raise OutOfTime
    try:
        return _compiled(pattern).search(text, timeout=min(remaining, 3600.0)) is not None
    except TimeoutError:
        raise OutOfTime from None


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> regex.Pattern[str]:
    return regex.compile(pattern)


def _describe(error: ValidationError) -> str:
    """An error without the answer's text: where in the schema it failed, and that keyword's value there."""
    location = _pointer(error.absolute_schema_path)
    if error.validator == "required":
        return f"fails {location}: {error.message}"  # names the schema's property, not the answer's
    if not isinstance(error.validator, str):
        return f"fails {location}"  # a `false` subschema
    value = json.dumps(error.validator_value, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"fails {location} = {_quote(value, _VALUE_CHARS)}"


def _pointer(path: Sequence[str | int] | Any) -> str:
    """A JSON pointer (`/properties/age/type`), or `/` for the root."""
    parts = [str(part).replace("~", "~0").replace("/", "~1") for part in path]
    return "/" + "/".join(parts)


def _quote(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

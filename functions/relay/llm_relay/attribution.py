"""*Pure*: whom a request's spend is attributed to, beyond its key: the caller's end user and its tags, stored on the
usage record so that `llm-relay usage --by user` and `--by tag:<name>` can split a key's cost.

Where they come from:
- `user` (OpenAI's own field, a string): the end user. An empty string is no user.
- `metadata` (OpenAI's shape: an object of at most 16 string pairs, keys at most 64 characters, values at most 512):
  tags, for a client that writes its request body.
- `X-Relay-Tags` (`team=search, feature=autocomplete`): tags with the same bounds, for whoever sits between the
  application and the relay (a gateway, a sidecar) and cannot or should not rewrite the body. Several header lines
  are one comma-separated list (HTTP's list rule), and empty list elements are ignored; the header is printable ASCII
  (Starlette reads header bytes as latin-1, so other text could not come back as the client wrote it: it belongs in
  `metadata`), a value cannot hold a comma, and one header may not name a tag twice.

When both name a tag, the header wins: it is set closer to the operator than the body the application writes, so a
gateway's `team` cannot be overridden by the application it fronts. The tags are merged by name first, then a tag
whose value is empty is dropped (so the header can also unset one), and at most 16 may remain.

They are high-cardinality values a client chooses (one per end user, per feature, per anything): they are stored on
the usage record and the request's ledger item only, and are never metric dimensions or per-request log fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from .errors import InvalidRequest

__all__ = [
    "HEADER",
    "MAX_KEY_CHARS",
    "MAX_TAGS",
    "MAX_USER_CHARS",
    "MAX_VALUE_CHARS",
    "NO_ATTRIBUTION",
    "Attribution",
    "as_item",
    "attribution_of",
    "from_item",
    "tags_header",
]

HEADER = "x-relay-tags"
_HEADER_NAME = "X-Relay-Tags"
MAX_TAGS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512
MAX_USER_CHARS = 512  # stored on every record of the user: bounded like a tag value


def _frozen(tags: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(sorted(tags.items())))


@dataclass(frozen=True, slots=True)
class Attribution:
    """The end user (None: none named) and the tags of one request, sorted by name."""

    user: str | None = None
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.tags, MappingProxyType):  # a value shared by records and contexts: never changed
            object.__setattr__(self, "tags", _frozen(self.tags))


NO_ATTRIBUTION = Attribution()


class _Headers(Protocol):
    def getlist(self, key: str) -> list[str]: ...


def tags_header(headers: _Headers) -> str | None:
    """The request's `X-Relay-Tags`, its lines joined as one list (None: the request sent none)."""
    lines = headers.getlist(HEADER)
    return ", ".join(lines) if lines else None


def attribution_of(user: object, metadata: object, header: str | None) -> Attribution:
    """The attribution of a request from its `user` and `metadata` fields (None when absent) and its `X-Relay-Tags`
    header; `InvalidRequest` (400) names the first field that breaks a bound."""
    from_body = _metadata_tags(metadata)
    from_header = _header_tags(header) if header is not None else {}
    merged = {name: value for name, value in {**from_body, **from_header}.items() if value}
    if len(merged) > MAX_TAGS:
        raise InvalidRequest(
            f"'metadata' and {_HEADER_NAME} name {len(merged)} tags together; at most {MAX_TAGS} are allowed.",
            param=HEADER,
        )
    return Attribution(_user(user), _frozen(merged))


def _user(user: object) -> str | None:
    if user is None or user == "":
        return None
    if not isinstance(user, str):
        raise InvalidRequest("Invalid value for 'user': expected a string.", param="user")
    if len(user) > MAX_USER_CHARS:
        raise InvalidRequest(f"'user' is longer than {MAX_USER_CHARS} characters.", param="user")
    return user


def _metadata_tags(metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidRequest("Invalid value for 'metadata': expected an object of string values.", param="metadata")
    if len(metadata) > MAX_TAGS:
        raise InvalidRequest(f"'metadata' has {len(metadata)} pairs; at most {MAX_TAGS} are allowed.", param="metadata")
    for name, value in metadata.items():
        if not isinstance(name, str):
            raise InvalidRequest("Invalid value for 'metadata': its names must be strings.", param="metadata")
        _check_name(name, "metadata", "'metadata'")
        if not isinstance(value, str):
            raise InvalidRequest(f"Invalid value for 'metadata.{name}': expected a string.", param=f"metadata.{name}")
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidRequest(
                f"'metadata.{name}' is longer than {MAX_VALUE_CHARS} characters.", param=f"metadata.{name}"
            )
    return dict(metadata)


def _header_tags(header: str) -> dict[str, str]:
    if not all(" " <= ch <= "~" or ch == "\t" for ch in header):
        raise _bad_header(f"{_HEADER_NAME} must be printable ASCII (send other text in 'metadata').")
    tags: dict[str, str] = {}
    for element in header.split(","):
        if not element.strip(" \t"):
            continue  # HTTP's list rule: empty elements (`a=1,,b=2`, a trailing comma) are not pairs
        name, equals, value = element.partition("=")
        name, value = name.strip(" \t"), value.strip(" \t")
        if not equals:
            raise _bad_header(f"{_HEADER_NAME} holds {_shown(element.strip())!r}, not a name=value pair.")
        _check_name(name, HEADER, _HEADER_NAME)
        if name in tags:
            raise _bad_header(f"{_HEADER_NAME} names the tag {name!r} twice.")
        if len(value) > MAX_VALUE_CHARS:
            raise _bad_header(f"{_HEADER_NAME}: the value of {name!r} is longer than {MAX_VALUE_CHARS} characters.")
        tags[name] = value
    if len(tags) > MAX_TAGS:
        raise _bad_header(f"{_HEADER_NAME} has {len(tags)} pairs; at most {MAX_TAGS} are allowed.")
    return tags


def _check_name(name: str, param: str, where: str) -> None:
    if not name:
        raise InvalidRequest(f"{where} holds a tag with an empty name.", param=param)
    if len(name) > MAX_KEY_CHARS:
        raise InvalidRequest(
            f"{where} holds the name {_shown(name)!r}, longer than {MAX_KEY_CHARS} characters.", param=param
        )


def _shown(text: str) -> str:
    """Text a client sent, cut short enough to quote in an error message."""
    return text if len(text) <= MAX_KEY_CHARS else text[:MAX_KEY_CHARS] + "..."


def _bad_header(message: str) -> InvalidRequest:
    return InvalidRequest(message, param=HEADER)


# --- on an item ------------------------------------------------------------------------------------------------
def as_item(attribution: Attribution) -> dict[str, Any]:
    """The attributes a usage record item or a request's ledger item holds: `user` and `tags` (a map), each only
    when there is one, so a request without attribution costs no bytes."""
    item: dict[str, Any] = {}
    if attribution.user is not None:
        item["user"] = attribution.user
    if attribution.tags:
        item["tags"] = dict(attribution.tags)
    return item


def from_item(item: Mapping[str, Any]) -> Attribution:
    """The attribution an item holds (`as_item`); none when it holds none."""
    user, tags = item.get("user"), item.get("tags") or {}
    if user is None and not tags:
        return NO_ATTRIBUTION
    return Attribution(None if user is None else str(user), _frozen({str(k): str(v) for k, v in tags.items()}))

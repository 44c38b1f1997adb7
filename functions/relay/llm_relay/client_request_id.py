"""*Pure*: the client-chosen request id (`X-Client-Request-Id`, the header OpenAI's SDKs send for the same
purpose). A client that names its request can cancel it before any response header exists, so the id must be safe
to echo, log and store: printable ASCII, at most 512 characters, else 400.

Every id the relay accepts must also be one the client can cancel, as one path segment of
`POST /v1/requests/{id}/cancel` (percent-encoded as any path segment is):
- no `/`: servers decode `%2F` before routing, so the id would split the path and the cancel would miss its route;
- not `.` or `..`: URL parsers resolve those segments (even written `%2E`) before the request leaves the client;
- leading and trailing spaces are not part of an id: HTTP drops them from a header value before the relay sees it,
  so the cancel ignores them too, and `" x "` names the same request as `"x"`.

The relay's own ids begin with `req_`; a client id may not, so the cancel call can tell the two apart without a
lookup (an unknown relay id is a 404; an unknown client id is a cancel kept for later).
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import InvalidRequest

HEADER = "x-client-request-id"
MAX_LENGTH = 512
RELAY_ID_PREFIX = "req_"
DOT_SEGMENTS = frozenset({".", ".."})


def is_relay_id(request_id: str) -> bool:
    """Whether a cancel call names the relay's own id rather than a client's."""
    return request_id.startswith(RELAY_ID_PREFIX)


def validate(value: str) -> str:
    """The id without the spaces around it (HTTP's reading of a header value), or `InvalidRequest` (400) naming
    what is wrong with it."""
    value = value.strip(" \t")
    if not value:
        raise InvalidRequest(f"{HEADER} must not be empty.", param=HEADER)
    if len(value) > MAX_LENGTH:
        raise InvalidRequest(f"{HEADER} is longer than {MAX_LENGTH} characters.", param=HEADER)
    if not all(" " <= ch <= "~" for ch in value):
        raise InvalidRequest(f"{HEADER} must be printable ASCII.", param=HEADER)
    if is_relay_id(value):
        raise InvalidRequest(f"{HEADER} must not begin with '{RELAY_ID_PREFIX}' (the relay's own ids).", param=HEADER)
    if "/" in value or value in DOT_SEGMENTS:
        raise InvalidRequest(
            f"{HEADER} must not contain '/' or be '.' or '..': the cancel call's path could not carry it.", param=HEADER
        )
    return value


def from_headers(headers: Mapping[str, str]) -> str | None:
    """The validated client id of a request, or None when it sent none."""
    value = headers.get(HEADER)
    return None if value is None else validate(value)

"""extract_key: the caller's key from the request headers."""

from __future__ import annotations

import pytest

from llm_relay.auth import extract_key
from llm_relay.errors import Unauthorized

KEY = "lr-Zm9vYmFyYmF6cXV4"


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"BeArEr {KEY}", f"  Bearer   {KEY}  "],
)
def test_bearer_scheme_is_case_insensitive_and_trimmed(authorization: str) -> None:
    assert extract_key({"authorization": authorization}) == KEY


def test_x_api_key_header() -> None:
    assert extract_key({"x-api-key": KEY}) == KEY
    assert extract_key({"x-api-key": f"  {KEY}\t"}) == KEY


def test_authorization_wins_over_x_api_key() -> None:
    assert extract_key({"authorization": f"Bearer {KEY}", "x-api-key": "lr-other"}) == KEY


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Bearer ", "Bearer    ", f"Basic {KEY}", KEY, f"Token {KEY}", f"Bearer:{KEY}"],
)
def test_malformed_authorization(authorization: str) -> None:
    # GIVEN an Authorization header that is not `Bearer <key>`
    # WHEN the key is extracted
    with pytest.raises(Unauthorized) as info:
        extract_key({"authorization": authorization})
    # THEN it is a 401 saying the header is malformed
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.message == "Malformed Authorization header: expected 'Bearer <key>'."


def test_malformed_authorization_is_not_rescued_by_x_api_key() -> None:
    with pytest.raises(Unauthorized) as info:
        extract_key({"authorization": "Basic dXNlcjpwYXNz", "x-api-key": KEY})
    assert info.value.message.startswith("Malformed Authorization header")


@pytest.mark.parametrize("headers", [{}, {"x-api-key": ""}, {"x-api-key": "   "}, {"content-type": "application/json"}])
def test_missing_key(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized) as info:
        extract_key(headers)
    assert info.value.status_code == 401
    assert info.value.code == "missing_api_key"
    assert info.value.message == "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
    assert info.value.body()["error"]["type"] == "invalid_request_error"

from __future__ import annotations

import pytest

from llm_relay import client_request_id
from llm_relay.errors import InvalidRequest


@pytest.mark.parametrize(
    "value", ["a", "123e4567-e89b-12d3-a456-426614174000", "~!x", "x" * 512, "...", ".x", "a.b", "a b", "a\\b"]
)
def test_printable_ascii_up_to_512_is_accepted(value: str) -> None:
    assert client_request_id.validate(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 513,
        "tab\there",
        "caf\u00e9",
        "nul\x00",
        "del\x7f",
        "req_abc",
        "a/b",
        "/",
        "x/",
        ".",
        "..",
        "  ..  ",
        "   ",
    ],
)
def test_anything_else_is_a_400_naming_the_header(value: str) -> None:
    # `a/b`, `.` and `..` could never be named by a cancel call's path segment
    with pytest.raises(InvalidRequest) as raised:
        client_request_id.validate(value)
    assert raised.value.status_code == 400 and raised.value.param == "x-client-request-id"


@pytest.mark.parametrize(("value", "read"), [(" x", "x"), ("x  ", "x"), ("\t a b \t", "a b")])
def test_spaces_around_an_id_are_not_part_of_it(value: str, read: str) -> None:
    # GIVEN an id as a cancel path carries it (HTTP already dropped these spaces from the request's header)
    # THEN it names the same request as the id without them
    assert client_request_id.validate(value) == read


def test_absent_header_is_none_and_relay_ids_are_told_apart() -> None:
    assert client_request_id.from_headers({}) is None
    assert client_request_id.from_headers({"x-client-request-id": "mine"}) == "mine"
    assert client_request_id.is_relay_id("req_0123") and not client_request_id.is_relay_id("mine")

"""Embeddings request validation: the shapes OpenAI's `POST /v1/embeddings` takes, each refusal naming the field
(`param`), the input-token estimate admission reserves before the upstream counts, and the texts the compliance
gate reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_relay.embeddings_request import (
    MAX_INPUTS,
    EmbeddingsRequest,
    estimate_input_tokens,
    parse_embeddings_request,
    texts,
    validate_embeddings_request,
)
from llm_relay.errors import InvalidRequest, ModelNotAllowed


def _parse(body: dict[str, Any], allowed: frozenset[str] | None = None) -> EmbeddingsRequest:
    return parse_embeddings_request(json.dumps(body).encode(), allowed_models=allowed)


def _refusal(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        _parse(body)
    return caught.value


# --- the shapes of `input` --------------------------------------------------------------------------------------


def test_a_single_string_is_one_input_and_the_optional_fields_stay_unset() -> None:
    # GIVEN the smallest request WHEN parsed
    request = _parse({"model": "emb", "input": "hello"})
    # THEN it is one text input, and nothing the client did not send is set
    assert (request.model, request.input, request.items, request.tokens) == ("emb", "hello", ("hello",), False)
    assert (request.encoding_format, request.dimensions, request.user, request.metadata) == (None, None, None, None)
    assert request.extra == {} and request.base64 is False


def test_a_list_of_strings_is_one_input_per_string() -> None:
    request = _parse({"model": "emb", "input": ["a", "b", "c"]})
    assert request.items == ("a", "b", "c") and request.tokens is False


def test_a_list_of_token_ids_is_one_input() -> None:
    request = _parse({"model": "emb", "input": [1, 2, 3]})
    assert request.items == ((1, 2, 3),) and request.tokens is True


def test_a_list_of_lists_of_token_ids_is_one_input_per_list() -> None:
    request = _parse({"model": "emb", "input": [[1, 2], [3]]})
    assert request.items == ((1, 2), (3,)) and request.tokens is True


def test_every_field_is_kept_as_sent() -> None:
    # GIVEN every field OpenAI defines, the relay's metadata and a provider's own field
    body = {
        "model": "emb",
        "input": ["x"],
        "encoding_format": "base64",
        "dimensions": 256,
        "user": "u-1",
        "metadata": {"team": "search"},
        "input_type": "query",
    }
    # WHEN parsed
    request = _parse(body)
    # THEN each is kept: the unknown one apart, the metadata unvalidated
    assert (request.encoding_format, request.base64, request.dimensions, request.user) == ("base64", True, 256, "u-1")
    assert request.metadata == {"team": "search"}
    assert request.extra == {"input_type": "query"}


def test_null_optional_fields_are_unset() -> None:
    request = _parse({"model": "emb", "input": "x", "encoding_format": None, "dimensions": None, "user": None})
    assert (request.encoding_format, request.dimensions, request.user) == (None, None, None)


def test_float_is_the_explicit_default_encoding() -> None:
    request = _parse({"model": "emb", "input": "x", "encoding_format": "float"})
    assert (request.encoding_format, request.base64) == ("float", False)


def test_the_largest_batch_is_accepted() -> None:
    assert len(_parse({"model": "emb", "input": ["w"] * MAX_INPUTS}).items) == MAX_INPUTS


def test_a_long_token_list_is_one_input_whatever_its_length() -> None:
    # the 2048 cap is on inputs; one input's length is the model's to judge
    request = _parse({"model": "emb", "input": list(range(5000))})
    assert len(request.items) == 1 and len(request.items[0]) == 5000


# --- refusals, each naming its field ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": 3, "input": "x"}, "model"),
        ({"model": "", "input": "x"}, "model"),
        ({"model": "m" * 257, "input": "x"}, "model"),
        ({"model": "emb"}, "input"),
        ({"model": "emb", "input": None}, "input"),
        ({"model": "emb", "input": 7}, "input"),
        ({"model": "emb", "input": ""}, "input"),
        ({"model": "emb", "input": []}, "input"),
        ({"model": "emb", "input": {"text": "x"}}, "input"),
        ({"model": "emb", "input": [""]}, "input.0"),
        ({"model": "emb", "input": ["a", ""]}, "input.1"),
        ({"model": "emb", "input": ["a", 1]}, "input.1"),
        ({"model": "emb", "input": ["a", ["b"]]}, "input.1"),
        ({"model": "emb", "input": [1, "a"]}, "input.1"),
        ({"model": "emb", "input": [1, -2]}, "input.1"),
        ({"model": "emb", "input": [1, True]}, "input.1"),
        ({"model": "emb", "input": [1, 2.5]}, "input.1"),
        ({"model": "emb", "input": [True]}, "input.0"),
        ({"model": "emb", "input": [None]}, "input.0"),
        ({"model": "emb", "input": [{"text": "x"}]}, "input.0"),
        ({"model": "emb", "input": [[1], "a"]}, "input.1"),
        ({"model": "emb", "input": [[1], []]}, "input.1"),
        ({"model": "emb", "input": [[1, -2]]}, "input.0.1"),
        ({"model": "emb", "input": [[1, "2"]]}, "input.0.1"),
        ({"model": "emb", "input": ["w"] * (MAX_INPUTS + 1)}, "input"),
        ({"model": "emb", "input": [[1]] * (MAX_INPUTS + 1)}, "input"),
        ({"model": "emb", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "emb", "input": "x", "encoding_format": 1}, "encoding_format"),
        ({"model": "emb", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "emb", "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": "emb", "input": "x", "dimensions": 8.0}, "dimensions"),
        ({"model": "emb", "input": "x", "dimensions": True}, "dimensions"),
        ({"model": "emb", "input": "x", "user": 5}, "user"),
    ],
)
def test_a_refusal_names_the_field(body: dict[str, Any], param: str) -> None:
    # GIVEN a body OpenAI would refuse WHEN parsed THEN it is a 400 naming the field, in the message too
    error = _refusal(body)
    assert error.status_code == 400 and error.param == param
    assert f"'{param}'" in error.message


def test_a_body_that_is_not_a_json_object_is_invalid_json() -> None:
    for raw in (b"{", b"[1, 2]", b"\xff"):
        with pytest.raises(InvalidRequest) as caught:
            parse_embeddings_request(raw, allowed_models=None)
        assert caught.value.code == "invalid_json"


def test_a_model_outside_the_keys_allow_list_is_not_allowed() -> None:
    # GIVEN a key restricted to one model WHEN it asks for another THEN 403 naming the model
    with pytest.raises(ModelNotAllowed) as caught:
        _parse({"model": "other", "input": "x"}, allowed=frozenset({"emb"}))
    assert caught.value.param == "model" and caught.value.status_code == 403
    assert _parse({"model": "emb", "input": "x"}, allowed=frozenset({"emb"})).model == "emb"


def test_validation_takes_a_decoded_object_too() -> None:
    request = validate_embeddings_request({"model": "emb", "input": ["a"]}, allowed_models=None)
    assert request.items == ("a",)


# --- the estimate and the texts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "estimate"),
    [
        ("abcd", 2),  # a token per four ASCII characters, and one for the tokenizer's markers
        ("abcde", 3),  # rounded up
        ("a", 2),
        ("日本語", 4),  # a token per other character: CJK text is about a token a character
        ("ab日", 3),
        (["abcd", "abcdefgh"], 2 + 3),
        ([5, 6, 7], 3),  # token ids are counted exactly
        ([[5, 6], [7]], 3),
    ],
)
def test_the_input_estimate(value: Any, estimate: int) -> None:
    assert estimate_input_tokens(_parse({"model": "emb", "input": value})) == estimate


def test_the_estimate_is_never_below_a_token_per_four_characters() -> None:
    # GIVEN texts of every length up to 64 WHEN estimated THEN never below what a plain 4-character rule counts
    for length in range(1, 65):
        text = "x" * length
        assert estimate_input_tokens(_parse({"model": "emb", "input": text})) > length // 4


def test_texts_are_the_string_inputs_and_token_ids_give_none() -> None:
    assert texts(_parse({"model": "emb", "input": "one"})) == ["one"]
    assert texts(_parse({"model": "emb", "input": ["a", "b"]})) == ["a", "b"]
    assert texts(_parse({"model": "emb", "input": [[1, 2]]})) == []

"""API keys: hashing, generation, the key record (its DynamoDB items: test_layout.py)."""

from __future__ import annotations

import hashlib
import re

from llm_relay.keys import KEY_ID_PREFIX, KEY_PREFIX, ApiKey, generate_key, generate_key_id, hash_key


def test_hash_is_sha256_hex_of_the_key() -> None:
    # GIVEN a plain key
    # WHEN hashed
    # THEN it is the lowercase hex SHA-256 of its UTF-8 bytes
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_key("lr-test") == hashlib.sha256(b"lr-test").hexdigest()
    assert hash_key("clé") == hashlib.sha256("clé".encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hash_key(generate_key()))


def test_generated_key_has_prefix_and_is_url_safe() -> None:
    key = generate_key()
    assert KEY_PREFIX == "lr-"
    assert key.startswith("lr-")
    assert re.fullmatch(r"lr-[A-Za-z0-9_-]{43}", key)


def test_generated_key_id_has_prefix() -> None:
    key_id = generate_key_id()
    assert KEY_ID_PREFIX == "rk_"
    assert re.fullmatch(r"rk_[0-9a-f]{12}", key_id)


def test_generated_keys_and_ids_are_unique() -> None:
    assert len({generate_key() for _ in range(500)}) == 500
    assert len({generate_key_id() for _ in range(500)}) == 500


def test_allows_model() -> None:
    restricted = ApiKey(key_id="rk_1", name="a", allowed_models=frozenset({"gpt-4o-mini"}))
    assert restricted.allows_model("gpt-4o-mini") is True
    assert restricted.allows_model("gpt-4o") is False
    assert restricted.allows_model("GPT-4o-mini") is False
    assert ApiKey(key_id="rk_2", name="b").allows_model("any-model") is True


def test_only_active_status_is_active() -> None:
    assert ApiKey(key_id="rk_1", name="a").active is True
    assert ApiKey(key_id="rk_1", name="a", status="revoked").active is False
    assert ApiKey(key_id="rk_1", name="a", status="ACTIVE").active is False

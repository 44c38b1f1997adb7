"""The dev key: one API key created in a local table so `make dev`, `make invoke` and the tests can call the
relay without the CLI. `RELAY_DEV_KEY` fixes its value so a curl line keeps working across restarts."""

from __future__ import annotations

from llm_relay.dynamo import KeyStore
from llm_relay.keys import ApiKey, generate_key, generate_key_id, hash_key, now_iso


def ensure_dev_key(keys: KeyStore, plain: str | None = None, name: str = "dev") -> tuple[str, ApiKey]:
    """Create (or reuse) the dev key; returns the plain key and its record."""
    plain = plain or generate_key()
    key_hash = hash_key(plain)
    existing = keys.get_by_hash(key_hash)
    if existing is not None:
        return plain, existing
    key = ApiKey(key_id=generate_key_id(), name=name, created_at=now_iso())
    keys.put(key, key_hash)
    return plain, key

"""API keys (pure): generation, hashing and the key record. Keys are stored only as SHA-256 hashes; the
plain key is shown once, at creation. A short public key id (`rk_…`) names a key in logs and records. The
key's DynamoDB items are laid out in `llm_relay.dynamo.layout`."""

from __future__ import annotations

import calendar
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal

from .sanitize.policy import KeyPolicy

KEY_PREFIX = "lr-"
KEY_ID_PREFIX = "rk_"
ISO = "%Y-%m-%dT%H:%M:%SZ"


def now_iso() -> str:
    """The second-precision UTC timestamp of key records (`created_at`, `revoked_at`) and request marks."""
    return time.strftime(ISO, time.gmtime())


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def generate_key_id() -> str:
    return KEY_ID_PREFIX + secrets.token_hex(6)


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    status: str = "active"
    created_at: str = ""
    revoked_at: str | None = None
    allowed_models: frozenset[str] | None = None
    limits: dict[str, Decimal] = field(default_factory=dict)
    expires_at: str | None = None  # ISO UTC second, as created_at; after it the key is refused like a revoked one
    sanitize: KeyPolicy | None = None  # the key's own sanitizer policy, floored by the deployment's (None: that one)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def expired(self, now_epoch: float) -> bool:
        return self.expires_at is not None and now_epoch >= calendar.timegm(time.strptime(self.expires_at, ISO))

    def allows_model(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

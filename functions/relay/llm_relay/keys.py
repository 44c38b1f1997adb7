"""API keys (pure): generation, hashing and the key record. Keys are stored only as SHA-256 hashes; the
plain key is shown once, at creation. A short public key id (`rk_…`) names a key in logs and records."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

KEY_PREFIX = "lr-"
KEY_ID_PREFIX = "rk_"


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

    @property
    def active(self) -> bool:
        return self.status == "active"

    def allows_model(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "key_id": self.key_id,
            "name": self.name,
            "status": self.status,
            "created_at": self.created_at,
        }
        if self.revoked_at:
            item["revoked_at"] = self.revoked_at
        if self.allowed_models is not None:
            item["allowed_models"] = sorted(self.allowed_models)
        if self.limits:
            item["limits"] = dict(self.limits)
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ApiKey:
        models = item.get("allowed_models")
        return cls(
            key_id=str(item["key_id"]),
            name=str(item.get("name", "")),
            status=str(item.get("status", "active")),
            created_at=str(item.get("created_at", "")),
            revoked_at=item.get("revoked_at"),
            allowed_models=frozenset(models) if models is not None else None,
            limits={k: Decimal(v) for k, v in (item.get("limits") or {}).items()},
        )

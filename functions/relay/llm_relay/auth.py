"""Authentication: the caller's key from `Authorization: Bearer …` or `x-api-key`, looked up by its
SHA-256 hash with a short in-process cache (revocation takes effect within the TTL; unknown keys are
cached too, so a flood of bad keys does not become a flood of DynamoDB reads)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import anyio
import anyio.to_thread

from .dynamo import KeyStore
from .errors import ServiceUnavailable, StoreUnavailable, Unauthorized
from .keys import ApiKey, hash_key

_MAX_CACHE = 10_000


def extract_key(headers: Mapping[str, str]) -> str:
    """The plain key from the request headers, or `Unauthorized` saying what is wrong."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
        return value.strip()
    api_key = headers.get("x-api-key")
    if api_key is not None and api_key.strip():
        return api_key.strip()
    raise Unauthorized(
        "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.", code="missing_api_key"
    )


class Authenticator:
    def __init__(self, store: KeyStore, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._ttl = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._inflight: dict[str, anyio.Event] = {}

    async def authenticate(self, headers: Mapping[str, str]) -> ApiKey:
        plain = extract_key(headers)
        if len(plain) > 256 or not plain.isprintable():
            raise Unauthorized("Malformed API key.")
        key = await self.lookup(hash_key(plain))
        if key is None or not key.active:
            raise Unauthorized("Invalid or revoked API key.")
        if key.expired(time.time()):
            raise Unauthorized("Expired API key.")
        return key

    async def lookup(self, key_hash: str) -> ApiKey | None:
        """Cached lookup. Concurrent misses for one key share a single DynamoDB read (a burst of requests
        on a cold instance would otherwise read the same item once per request)."""
        while True:
            cached = self._cache.get(key_hash)
            if cached is not None and cached[0] > self._clock():
                return cached[1]
            pending = self._inflight.get(key_hash)
            if pending is None:
                break
            await pending.wait()
            if key_hash not in self._cache:  # the shared read failed: try our own
                break
        done = self._inflight[key_hash] = anyio.Event()
        try:
            key = await anyio.to_thread.run_sync(self._store.get_by_hash, key_hash)
        except StoreUnavailable as exc:
            raise ServiceUnavailable("The key store is unavailable; try again shortly.") from exc
        finally:
            self._inflight.pop(key_hash, None)
            done.set()
        if len(self._cache) >= _MAX_CACHE:
            self._cache.clear()
        self._cache[key_hash] = (self._clock() + self._ttl, key)
        return key

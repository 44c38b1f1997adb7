"""extract_key: the caller's key from the request headers. Authenticator: the cached lookup (TTL on a fake
clock) and its single flight, against a fake store."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import cast

import anyio
import pytest

from llm_relay.auth import Authenticator, extract_key
from llm_relay.dynamo import KeyStore
from llm_relay.errors import ServiceUnavailable, StoreUnavailable, Unauthorized
from llm_relay.keys import ApiKey, hash_key

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


# --- Authenticator: the cache and its single flight, with a fake store and a fake clock ----------------------------
TTL = 30.0
HEADERS = {"authorization": f"Bearer {KEY}"}


class FakeKeyStore:
    """Stands in for KeyStore.get_by_hash: one key, revocable; counts lookups. `gate`, when set, holds
    every lookup until released; `failures` makes that many lookups fail as DynamoDB being down would."""

    def __init__(self) -> None:
        self.key: ApiKey | None = ApiKey(key_id="rk_test", name="test")
        self.lookups = 0
        self.failures = 0
        self.gate: threading.Event | None = None

    def get_by_hash(self, key_hash: str) -> ApiKey | None:
        self.lookups += 1
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "the test never released the lookup"
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("down")
        return self.key if key_hash == hash_key(KEY) else None

    def revoke(self) -> None:
        assert self.key is not None
        self.key = replace(self.key, status="revoked")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _authenticator(store: FakeKeyStore, clock: FakeClock) -> Authenticator:
    return Authenticator(cast(KeyStore, store), TTL, clock=clock)


def test_revocation_takes_effect_after_the_ttl_not_before() -> None:
    # GIVEN a key the relay has just looked up (and cached)
    store, clock = FakeKeyStore(), FakeClock()
    auth = _authenticator(store, clock)
    assert anyio.run(auth.authenticate, HEADERS).key_id == "rk_test"
    # WHEN it is revoked in the store
    store.revoke()
    # THEN until the TTL has passed, the cached key is still accepted, without a store read
    clock.now += TTL - 0.001
    assert anyio.run(auth.authenticate, HEADERS).key_id == "rk_test"
    assert store.lookups == 1
    # AND once it has, the key is read again and refused
    clock.now += 0.001
    with pytest.raises(Unauthorized, match="Invalid or revoked"):
        anyio.run(auth.authenticate, HEADERS)
    assert store.lookups == 2


def test_unknown_keys_are_cached_too() -> None:
    # GIVEN a flood of one wrong key
    store, clock = FakeKeyStore(), FakeClock()
    auth = _authenticator(store, clock)
    for _ in range(5):
        with pytest.raises(Unauthorized):
            anyio.run(auth.authenticate, {"authorization": "Bearer lr-wrong"})
    # THEN one store read within the TTL, the next after it
    assert store.lookups == 1
    clock.now += TTL
    with pytest.raises(Unauthorized):
        anyio.run(auth.authenticate, {"authorization": "Bearer lr-wrong"})
    assert store.lookups == 2


def test_malformed_keys_never_reach_the_store() -> None:
    store = FakeKeyStore()
    auth = _authenticator(store, FakeClock())
    for key in ("lr-" + "x" * 300, "lr-bad\x00key"):
        with pytest.raises(Unauthorized, match="Malformed API key"):
            anyio.run(auth.authenticate, {"x-api-key": key})
    assert store.lookups == 0


async def _authenticate_concurrently(auth: Authenticator, store: FakeKeyStore, n: int) -> list[object]:
    """n authentications of the same key at once; the store's first lookup is held until every task waits."""
    results: list[object] = []
    store.gate = threading.Event()

    async def one() -> None:
        try:
            results.append(await auth.authenticate(HEADERS))
        except ServiceUnavailable as exc:
            results.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()  # one in the lookup, the others waiting for it
        store.gate.set()
    return results


def test_concurrent_misses_for_one_key_share_a_single_lookup() -> None:
    # GIVEN a cold cache
    store = FakeKeyStore()
    auth = _authenticator(store, FakeClock())
    # WHEN 20 requests with the same key authenticate at once
    results = anyio.run(_authenticate_concurrently, auth, store, 20)
    # THEN all are authenticated by one store read
    assert [getattr(r, "key_id", r) for r in results] == ["rk_test"] * 20
    assert store.lookups == 1


def test_a_failed_shared_lookup_lets_the_waiters_read_again() -> None:
    # GIVEN a cold cache and a store whose first read fails
    store = FakeKeyStore()
    store.failures = 1
    auth = _authenticator(store, FakeClock())
    # WHEN 5 requests with the same key authenticate at once
    results = anyio.run(_authenticate_concurrently, auth, store, 5)
    # THEN only the one whose read failed gets a 503: the others are not failed by it, and each reads again at
    # most once (today each tries its own read: lookups == 5; sharing the second read would make it 2)
    assert sum(isinstance(r, ServiceUnavailable) for r in results) == 1
    assert sum(getattr(r, "key_id", None) == "rk_test" for r in results) == 4
    assert 2 <= store.lookups <= 5

"""LeaseKeeper without DynamoDB: one renewal round covers every tracked request with its checkpoint, the lease is
extended to now + RELAY_LEASE_S, and a request settled elsewhere stops being renewed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from llm_relay.errors import StoreUnavailable
from llm_relay.leases import LeaseKeeper


class FakeRequests:
    def __init__(self, gone: set[str] | None = None, fail: bool = False) -> None:
        self.rounds: list[tuple[int, dict[str, Any]]] = []
        self.gone = gone or set()
        self.fail = fail

    def renew(self, lease_until: int, checkpoints: Mapping[str, Mapping[str, Any]]) -> set[str]:
        if self.fail:
            raise StoreUnavailable("DynamoDB TransactWriteItems: ReadTimeoutError")
        self.rounds.append((lease_until, {rid: dict(point) for rid, point in checkpoints.items()}))
        return self.gone & set(checkpoints)


def test_one_round_renews_every_tracked_request_with_its_checkpoint() -> None:
    # GIVEN three requests tracked, one of them with progress
    store = FakeRequests()
    keeper = LeaseKeeper(store, 60, clock=lambda: 1000.2)  # type: ignore[arg-type]
    keeper.track("req_a", dict)
    keeper.track("req_b", lambda: {"cp_completion": 7})
    keeper.track("req_c", dict)
    keeper.untrack("req_c")
    # WHEN a round runs
    anyio.run(keeper.renew_now)
    # THEN one write covers both, extending their leases to now + 60 s, with their checkpoints
    assert store.rounds == [(1061, {"req_a": {}, "req_b": {"cp_completion": 7}})]


def test_a_request_settled_elsewhere_is_no_longer_renewed_and_a_failed_round_keeps_the_rest() -> None:
    store = FakeRequests(gone={"req_dead"})
    keeper = LeaseKeeper(store, 30, clock=lambda: 0.0)  # type: ignore[arg-type]
    keeper.track("req_dead", dict)
    keeper.track("req_live", dict)
    anyio.run(keeper.renew_now)
    assert keeper.tracked == 1
    # a round DynamoDB refuses is logged, not raised; the request stays tracked for the next round
    store.fail = True
    anyio.run(keeper.renew_now)
    assert keeper.tracked == 1
    # and nothing tracked: no write at all
    keeper.untrack("req_live")
    store.fail = False
    anyio.run(keeper.renew_now)
    assert len(store.rounds) == 1

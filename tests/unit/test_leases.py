"""LeaseKeeper without DynamoDB: one renewal round covers every tracked request with its checkpoint, the lease is
extended to now + RELAY_LEASE_S, and a request settled elsewhere stops being renewed. Each request's `Lease` says
until when it is surely held: only a confirmed renewal moves it, and the stream must end half a renewal interval
before it, or at once when a renewal finds the request settled."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import anyio

from llm_relay.dynamo.request_store import SETTLED, UNLEASED
from llm_relay.errors import StoreUnavailable
from llm_relay.leases import LeaseKeeper, no_checkpoint
from llm_relay.ledger import Checkpoint


class FakeRequests:
    def __init__(self, gone: dict[str, str] | None = None, fail: bool = False) -> None:
        self.rounds: list[tuple[int, dict[str, Any]]] = []
        self.gone = gone or {}
        self.fail = fail

    def renew(self, lease_until: int, checkpoints: Mapping[str, Checkpoint | None]) -> dict[str, str]:
        if self.fail:
            raise StoreUnavailable("DynamoDB TransactWriteItems: ReadTimeoutError")
        self.rounds.append((lease_until, dict(checkpoints)))
        return {rid: why for rid, why in self.gone.items() if rid in checkpoints}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_one_round_renews_every_tracked_request_with_its_checkpoint() -> None:
    # GIVEN three requests tracked, one of them with progress
    store = FakeRequests()
    keeper = LeaseKeeper(store, 60, clock=lambda: 1000.2)  # type: ignore[arg-type]
    keeper.track("req_a", no_checkpoint)
    keeper.track("req_b", lambda: Checkpoint(5, 7))
    keeper.track("req_c", no_checkpoint)
    keeper.untrack("req_c")
    # WHEN a round runs
    anyio.run(keeper.renew_now)
    # THEN one write covers both, extending their leases to now + 60 s, with their checkpoints
    assert store.rounds == [(1061, {"req_a": None, "req_b": Checkpoint(5, 7)})]


def test_a_request_settled_elsewhere_is_no_longer_renewed_and_a_failed_round_keeps_the_rest() -> None:
    store = FakeRequests(gone={"req_dead": SETTLED})
    keeper = LeaseKeeper(store, 30, clock=lambda: 0.0)  # type: ignore[arg-type]
    keeper.track("req_dead", no_checkpoint)
    keeper.track("req_live", no_checkpoint)
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


def test_only_a_confirmed_renewal_moves_the_lease_and_the_stream_must_end_before_it_runs_out() -> None:
    # GIVEN a request admitted at t=1000 with a 6 s lease (renewal every 2 s): held until 1006, end by 1005
    clock = Clock(1000.5)
    store = FakeRequests()
    keeper = LeaseKeeper(store, 6, clock=clock)  # type: ignore[arg-type]
    lease = keeper.track("req_a", no_checkpoint, since=1000.0)
    assert (lease.held_until, lease.end_by) == (1006.0, 1005.0)
    # WHEN a renewal at t=1002 is confirmed: held until ceil(1002 + 6)
    clock.now = 1002.0
    anyio.run(keeper.renew_now)
    assert (lease.held_until, lease.end_by, lease.lapsed()) == (1008, 1007.0, False)
    # AND the next rounds fail (DynamoDB unreachable): the lease stays where the last confirmed one put it
    store.fail = True
    for now in (1004.0, 1006.0):
        clock.now = now
        anyio.run(keeper.renew_now)
    assert lease.held_until == 1008 and not lease.lapsed()
    # THEN it lapses half a renewal interval before it would run out, not at the expiry itself
    clock.now = 1006.99
    assert not lease.lapsed()
    clock.now = 1007.0
    assert lease.lapsed() and not lease.settled_elsewhere
    # AND tracking it again (the stream's progress) keeps the same lease
    assert keeper.track("req_a", lambda: Checkpoint(5, 1)) is lease


def test_a_waiting_stream_wakes_at_once_when_a_renewal_finds_its_request_settled() -> None:
    # GIVEN a stream waiting on its lease, far from its expiry
    clock = Clock(0.0)
    store = FakeRequests()
    keeper = LeaseKeeper(store, 60, clock=clock)  # type: ignore[arg-type]
    lease = keeper.track("req_paused", no_checkpoint)
    woke: list[bool] = []

    async def main() -> None:
        done = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await lease.wait_lapsed()
                woke.append(lease.settled_elsewhere)
                done.set()

            tg.start_soon(watch)
            await anyio.wait_all_tasks_blocked()
            assert not woke
            # WHEN a renewal is refused: a reconciler settled the request (the process was paused past its lease)
            store.gone = {"req_paused": SETTLED}
            with anyio.fail_after(5):
                await keeper.renew_now()
                await done.wait()

    anyio.run(main)
    # THEN the waiter wakes, with the lease marked settled, and the request is no longer renewed
    assert woke == [True] and keeper.tracked == 0


def test_a_request_admitted_without_its_item_has_no_lease_to_outlive() -> None:
    # GIVEN a request admitted while DynamoDB was down (failing open): a renewal finds no lease on it
    clock = Clock(0.0)
    keeper = LeaseKeeper(FakeRequests(gone={"req_open": UNLEASED}), 3, clock=clock)  # type: ignore[arg-type]
    lease = keeper.track("req_open", no_checkpoint)
    anyio.run(keeper.renew_now)
    # THEN its stream is never ended for a lease: nothing can settle it under the stream
    clock.now = 10_000.0
    assert lease.held_until == math.inf and not lease.lapsed() and keeper.tracked == 0

"""A renewal round against the moto table: live requests are renewed with their checkpoints in one write, and the
ones it cannot renew say why (settled by a reconciler: the stream must end; no lease at all, a request admitted
without its item: nothing to end it for), read from the refusal itself."""

from __future__ import annotations

import time

import anyio

from llm_relay.dynamo import Stores
from llm_relay.dynamo.request_store import SETTLED, UNLEASED
from llm_relay.ledger import Checkpoint
from llm_relay.pricing import PriceTable
from llm_relay.reconciler import Reconciler
from tests.integration.limits_support import context, key_with, limiter


def test_a_renewal_renews_the_live_and_tells_settled_from_unleased(stores: Stores, moto_endpoint: str) -> None:
    # GIVEN two requests admitted 10 minutes ago with a 60 s lease; one of them settled as lost by a reconciler
    key = key_with(max_concurrent=5)
    past = time.time() - 600
    limits = limiter(moto_endpoint, stores.table_name, clock=lambda: past, lease_s=60)
    for rid in ("req_live", "req_lost"):
        anyio.run(limits.admit, context(key, rid))
    [record] = [r for r in Reconciler(stores, PriceTable.load(), 90).settle(["req_lost"]) if r is not None]
    assert record.termination_reason == "lost"
    # WHEN one round renews them, and a request that has no item (admitted while DynamoDB was down, failing open)
    until = int(time.time()) + 60
    refused = stores.requests.renew(
        until, {"req_live": Checkpoint(5, 3), "req_lost": Checkpoint(5, 9), "req_open": None}
    )
    # THEN the live one is renewed with its checkpoint, and each other says why it was not
    assert refused == {"req_lost": SETTLED, "req_open": UNLEASED}
    live = stores.requests.get("req_live") or {}
    assert (live["lease_until"], live["cp_completion"]) == (until, 3)
    assert (stores.requests.get("req_lost") or {})["cp_completion"] == 0  # untouched since it was settled

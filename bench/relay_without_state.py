"""The dev relay with its DynamoDB work taken out (admission, lease renewals and finalization writes), for the
benchmark only: run side by side with the real relay, it separates the relay's own overhead from the local
DynamoDB emulator's, which serializes every request (see docs/limits.md) and shares the benchmark's CPUs.
Auth still reads the key once (then it is cached). Never a way to run the relay: the parts are passed to the app
through `create_app`'s own parameters, as a test passes its fakes."""

from __future__ import annotations

from llm_relay.leases import Lease, Progress
from llm_relay.limits import Ticket
from llm_relay.limits.extend import BudgetGuard
from llm_relay.outcome import RequestContext, StreamOutcome
from llm_relay_dev import devserver


class NoState:
    """Admits everything, guards no budget, settles nothing."""

    async def admit(self, ctx: RequestContext) -> Ticket:
        return Ticket()

    def budget_guard(self, ctx: RequestContext) -> BudgetGuard | None:
        return None

    async def finalize(self, ctx: RequestContext, outcome: StreamOutcome) -> None:
        return None


class NoLeases:
    """No lease renewals either (the ledger's writes while a stream runs): a stream has no lease to stay within."""

    def track(self, request_id: str, progress: Progress, *, since: float | None = None) -> Lease | None:
        return None

    def untrack(self, request_id: str) -> None:
        return None

    async def run(self) -> None:
        return None


if __name__ == "__main__":
    devserver.main(limiter=NoState(), leases=NoLeases())

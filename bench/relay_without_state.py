"""The dev relay with its DynamoDB work taken out (admission and finalization writes), for the benchmark
only: run side by side with the real relay, it separates the relay's own overhead from the local
DynamoDB emulator's, which serializes every request (see docs/limits.md) and shares the benchmark's CPUs.
Auth still reads the key once (then it is cached). Never a way to run the relay."""

from __future__ import annotations

from typing import Any

from llm_relay import app, pipeline
from llm_relay.admission import Ticket
from llm_relay_dev import devserver


class _NoState:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def admit(self, ctx: Any) -> Ticket:
        return Ticket()

    async def finalize(self, ctx: Any, outcome: Any) -> None:
        return None


class _NoLeases:
    """No lease renewals either (the ledger's writes while a stream runs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def track(self, *args: Any, **kwargs: Any) -> None:
        return None  # no lease: the stream has none to stay within

    def untrack(self, *args: Any) -> None:
        return None

    async def run(self) -> None:
        return None


if __name__ == "__main__":
    setattr(app, "Limiter", _NoState)  # noqa: B010 - patched for this process only
    setattr(pipeline, "LeaseKeeper", _NoLeases)  # noqa: B010
    devserver.main()

"""Per-key limits and the money they guard: one face, the phases behind it (docs/design.md, "Admission in one
DynamoDB transaction", "Budgets are reservations").

    Admission   what the pipeline asks of the limits: admit, guard a stream's budget, settle (a protocol)
    Ticket      what admission granted a request; carried to its settlement (`outcome.Ticket`)
    Limiter     the relay's admission, budget extension and settlement, built by the composition root

Behind the face, by phase:

    rules.py    which limits apply to a key, the sliding-window arithmetic, refusals and their headers (pure)
    budgets.py  budget reservations: what a request may cost at worst, and how it grows (pure)
    seen.py     what this process knows of a key's counters (lower bounds learnt from DynamoDB's answers)
    admit.py    admission: one DynamoDB transaction before the upstream call
    extend.py   a running stream's budget: the guard on the token path, and the extension write
    settle.py   finalization: one DynamoDB transaction before the response body closes
    limiter.py  the three phases on one set of stores, as the app wires them

The phases share the pure modules and `seen`, never each other: admission does not import settlement, and nothing
here imports the pipeline, the stream or the reconciler (the reconciler admission uses is injected).

The face is resolved on first use: the pure modules (`rules`, `budgets`) are imported by the DynamoDB adapter and
the request's own types, which must not pull admission's I/O in with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..outcome import Ticket
    from .limiter import Admission, Limiter

__all__ = ["Admission", "Limiter", "Ticket"]


def __getattr__(name: str) -> Any:
    if name == "Admission":
        from .limiter import Admission

        return Admission
    if name == "Limiter":
        from .limiter import Limiter

        return Limiter
    if name == "Ticket":
        from ..outcome import Ticket

        return Ticket
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

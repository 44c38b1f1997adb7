"""SnapStart: what a restored execution environment must redo before it serves.

With SnapStart (template parameter `SnapStart`), Lambda snapshots the environment after init and restores copies
of it. Anything init left behind is then shared by every copy: open connections (to peers that no longer know
them) and random state (every copy would draw the same jitter). The relay creates no request ids, leases or
tickets during init, so none is captured; ids come from `uuid4`/`secrets`, which read the OS's entropy at each
call and are safe after a restore.

Under the web adapter the relay runs in its own process, not in the Lambda Python runtime's, so the runtime's
in-process hooks (`snapshot_restore_py.register_after_restore`) never run here. The adapter (1.0.0, layer 27)
bridges the lifecycle: after a restore, before any invocation, it POSTs the path in
`AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH`, then checks readiness again. `after_restore` is what that POST runs.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sanitize.guardrail import Guardrail
    from .upstreams.router import Upstreams

AFTER_RESTORE_PATH = "/_lwa/after-restore"  # template.yaml sets AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH to it


async def after_restore(upstreams: Upstreams | None, guardrail: Guardrail | None = None) -> None:
    """Reseed the random state and drop the upstream connection pool (and a Bedrock client's credentials) captured
    in the snapshot, and the guardrail's client likewise. The DynamoDB client opens no connection during init; a
    stale one would be retried by botocore (standard retry mode)."""
    random.seed()
    if guardrail is not None:
        guardrail.client.renew()
    if upstreams is not None:  # None only before the lifespan opened it
        await upstreams.renew()

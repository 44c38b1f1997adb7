"""What the limits report, as typed calls (`metrics.MetricsEmitter` implements them; a test passes its own), and the
two things admission and settlement share: the bounded wait on a blocking store call, and the log line of a usage
record DynamoDB would not take."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread
from aws_lambda_powertools import Logger

from ..errors import StoreUnavailable

T = TypeVar("T")
logger = logging.getLogger(__name__)


class LimitsMetrics(Protocol):
    def admission_attempts(self, attempts: int) -> None:
        """Transactions one admission took (1: the cached previous minute was right)."""

    def admission_rejected(self, limit: str) -> None:
        """A refusal by one limit (`rpm`, `tpm`, `max_concurrent`, `daily_budget_usd`, `monthly_budget_usd`)."""

    def admission_store_error(self, policy: str) -> None:
        """DynamoDB did not decide an admission; `fail_closed` (503) or `fail_open`."""

    def budget_extension(self, result: str) -> None:
        """A running stream's extension: `granted`, `refused` or `store_error`."""

    def usage_write_failed(self) -> None:
        """A usage record DynamoDB would not take (logged in full instead)."""


class NoMetrics:
    """Reports nothing (a limiter built without telemetry: the CLI, a test)."""

    def admission_attempts(self, attempts: int) -> None:
        return None

    def admission_rejected(self, limit: str) -> None:
        return None

    def admission_store_error(self, policy: str) -> None:
        return None

    def budget_extension(self, result: str) -> None:
        return None

    def usage_write_failed(self) -> None:
        return None


class Guarded:
    """Another `LimitsMetrics`, whose failures are logged, never raised: a metric must not fail a request whose
    admission or settlement DynamoDB took."""

    def __init__(self, inner: LimitsMetrics) -> None:
        self._inner = inner

    def _call(self, name: str, *args: Any) -> None:
        try:
            getattr(self._inner, name)(*args)
        except Exception:
            logger.exception("limits metric %s failed", name)

    def admission_attempts(self, attempts: int) -> None:
        self._call("admission_attempts", attempts)

    def admission_rejected(self, limit: str) -> None:
        self._call("admission_rejected", limit)

    def admission_store_error(self, policy: str) -> None:
        self._call("admission_store_error", policy)

    def budget_extension(self, result: str) -> None:
        self._call("budget_extension", result)

    def usage_write_failed(self) -> None:
        self._call("usage_write_failed")


async def bounded(call: Callable[..., T], *args: Any, until: float) -> T:
    """Run a blocking store call in a thread, waiting for it until the monotonic `until` at most (the thread is
    abandoned then; its botocore timeouts end it)."""
    with anyio.move_on_after(max(0.0, until - time.monotonic())):
        return await anyio.to_thread.run_sync(call, *args, abandon_on_cancel=True)
    raise StoreUnavailable("DynamoDB did not answer in time", outcome_unknown=True)


LATER_S = 600.0  # a write DynamoDB did not take in time is retried after the answer this long


def write_later(what: str, write: Callable[[], T], done: Callable[[T], None], fallback: str) -> None:
    """A write DynamoDB did not take in time, retried from a thread after the answer (on Lambda, in this environment's
    next invocations) until it is taken, then `done` with its answer: `StoreUnavailable` again in 200 ms, doubling up
    to 5 s, for `LATER_S`. Given up, or failing otherwise, it is logged (`what` could not be done; `fallback` says
    what happens instead): a thread's failure must not go unseen."""

    def run() -> None:
        give_up = time.monotonic() + LATER_S
        for attempt in itertools.count():
            try:
                answer = write()
            except StoreUnavailable as exc:
                if time.monotonic() > give_up:
                    logger.error("could not %s (%s); %s", what, exc, fallback)
                    return
                time.sleep(min(5.0, 0.2 * 2**attempt))
                continue
            except Exception:
                logger.exception("could not %s; %s", what, fallback)
                return
            done(answer)
            return

    threading.Thread(target=run, daemon=True).start()


def record_not_written(log: Logger, metrics: LimitsMetrics, record: dict[str, Any], exc: Exception) -> None:
    """A usage record DynamoDB would not take: one structured log line with the whole record, to replay from the logs
    (docs/limits.md, "What is guaranteed"); the reconciler settles an admitted request from its last checkpoint."""
    metrics.usage_write_failed()
    log.error("usage record not written", extra={"usage_record": record, "store_error": str(exc)})

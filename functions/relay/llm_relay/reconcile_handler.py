"""The scheduled reconciler's entry point (template.yaml, `ReconcilerFunction`, every minute on EventBridge
Scheduler): the same `Reconciler` as `llm-relay reconcile`, with its metric (requests settled as `lost`), which
an alarm watches. Handler: `llm_relay.reconcile_handler.handler`."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from .dynamo import Stores
from .metrics import REASON, RECONCILED_LOST, STREAMS, MetricsEmitter
from .pricing import PriceTable
from .reconciler import Reconciler
from .settings import Settings
from .termination import TerminationReason

_reconciler: tuple[Reconciler, MetricsEmitter, Logger] | None = None


def _build() -> tuple[Reconciler, MetricsEmitter, Logger]:
    settings = Settings()
    prices = PriceTable.load(settings.prices_json)
    reconciler = Reconciler(Stores.from_settings(settings), prices, settings.usage_retention_days)
    metrics = MetricsEmitter(settings.metrics_namespace, settings.service_name)
    return reconciler, metrics, Logger(service=settings.service_name, level=settings.log_level)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """One reconciliation pass; the clients are built once per sandbox."""
    global _reconciler
    if _reconciler is None:
        _reconciler = _build()
    reconciler, metrics, logger = _reconciler
    done = reconciler.run()
    metrics.emit({RECONCILED_LOST: len(done.settled)})
    if done.settled:
        metrics.emit({STREAMS: len(done.settled)}, {REASON: TerminationReason.LOST.value})
    for record in done.settled:
        logger.warning("request settled as lost", extra={"usage_record": record.as_json()})
    return {"settled": len(done.settled), "skipped": done.skipped}

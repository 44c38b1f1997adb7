"""The scheduled reconciler's entry point (template.yaml, `ReconcilerFunction`, every minute on EventBridge
Scheduler): the same `Reconciler` as `llm-relay reconcile`, counting what it settles through the same
`Telemetry.settled_lost` (requests settled as `lost`, which an alarm watches; `StreamsTerminated` with reason
`lost`; their tokens and cost). Handler: `llm_relay.reconcile_handler.handler`."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from .dynamo import Stores
from .metrics import RECONCILED_LOST, MetricsEmitter
from .pricing import PriceTable
from .reconciler import Reconciler
from .settings import Settings
from .telemetry import Telemetry

_reconciler: tuple[Reconciler, Telemetry] | None = None


def _build() -> tuple[Reconciler, Telemetry]:
    settings = Settings()
    prices = PriceTable.load(settings.prices_json)
    known_models = set(settings.allowed_model_set or ()) | set(prices.models)  # as the relay's: a bounded dimension
    telemetry = Telemetry(
        MetricsEmitter(settings.metrics_namespace, settings.service_name, known_models),
        Logger(service=settings.service_name, level=settings.log_level),
    )
    reconciler = Reconciler(
        Stores.from_settings(settings), prices, settings.usage_retention_days, on_lost=telemetry.settled_lost
    )
    return reconciler, telemetry


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """One reconciliation pass; the clients are built once per sandbox."""
    global _reconciler
    if _reconciler is None:
        _reconciler = _build()
    reconciler, telemetry = _reconciler
    done = reconciler.run()
    if not done.settled:
        telemetry.metrics.emit({RECONCILED_LOST: 0})  # a datapoint every run: the alarm tells quiet from missing
    return {"settled": len(done.settled), "skipped": done.skipped}

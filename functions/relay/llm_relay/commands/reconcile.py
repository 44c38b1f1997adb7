"""`llm-relay reconcile`: settle every request whose lease expired without a finish (its relay stopped) as
`lost`, exactly once whoever else runs it (the scheduled function, another operator), and print how many and which.

What it settles is counted as the scheduled reconciler counts it (`Telemetry.settled_lost`: `RequestsReconciledLost`,
`StreamsTerminated` with reason `lost`, their tokens and cost). Those are EMF documents, which only become metrics on
Lambda; from an operator's machine the same documents are published with CloudWatch `PutMetricData` in the table's
region (to the `--endpoint-url` when one is given: the local DynamoDB, moto, takes them too), unless `--no-metrics`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from ..metrics import MetricsEmitter
from ..pricing import PriceTable
from ..reconciler import Reconciler
from ..telemetry import Telemetry
from .output import print_json, print_table
from .usage import RECORD_HEADERS, record_cells

if TYPE_CHECKING:
    from ..dynamo import Stores
    from ..settings import Settings

_PUT_BATCH = 1000  # PutMetricData's limit of data points per call


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reconcile = commands.add_parser("reconcile", help="settle requests whose relay stopped as lost; print them")
    reconcile.add_argument("--json", action="store_true", help="machine-readable output")
    reconcile.add_argument(
        "--no-metrics", action="store_true", help="do not publish what was settled to CloudWatch (PutMetricData)"
    )
    reconcile.set_defaults(run=_reconcile)


def _reconcile(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    prices = PriceTable.load(settings.prices_json)
    sink = CloudWatchSink()
    known_models = set(settings.allowed_model_set or ()) | set(prices.models)
    # The record of each settled request is printed below; the log lines would repeat it, so only errors show.
    quiet = Logger(service=settings.service_name, level="ERROR", logger_handler=logging.StreamHandler(sys.stderr))
    telemetry = Telemetry(MetricsEmitter(settings.metrics_namespace, settings.service_name, known_models, sink), quiet)
    reconciler = Reconciler(stores, prices, settings.usage_retention_days, on_lost=telemetry.settled_lost)
    done = reconciler.run()
    published = None if args.no_metrics else _publish(sink, args, settings, stores)
    if args.json:
        print_json(
            {
                "settled_count": len(done.settled),
                "settled": [record.as_json() for record in done.settled],
                "skipped": done.skipped,
                "metrics_published": published,
            }
        )
        return 0
    print(f"settled {len(done.settled)} request(s) as lost; {done.skipped} already settled by someone else")
    if done.settled:
        print_table(RECORD_HEADERS, [record_cells(record) for record in done.settled])
    return 0


def _publish(sink: CloudWatchSink, args: argparse.Namespace, settings: Settings, stores: Stores) -> int | None:
    """Publish what the run counted; the number of data points, or None (with one line on stderr) if CloudWatch
    refused: the settlements stand either way."""
    if not sink.data:
        return 0
    import boto3

    region = stores.requests.client.meta.region_name
    try:
        session = boto3.session.Session(profile_name=getattr(args, "profile", None))
        client = session.client("cloudwatch", region_name=region, endpoint_url=settings.dynamodb_endpoint)
        return sink.publish(client)
    except (BotoCoreError, ClientError) as exc:
        print(f"llm-relay: warning: metrics not published to CloudWatch: {exc}", file=sys.stderr)
        return None


class CloudWatchSink:
    """A `MetricsEmitter` sink that keeps each EMF document's data points, to publish with `PutMetricData`: the
    same namespace, names, dimension sets, units and timestamps the document would have made on Lambda."""

    def __init__(self) -> None:
        self.data: dict[str, list[dict[str, Any]]] = {}  # namespace -> MetricData

    def __call__(self, line: str) -> None:
        document = json.loads(line)
        aws = document["_aws"]
        at = datetime.fromtimestamp(aws["Timestamp"] / 1000, tz=UTC)
        for directive in aws["CloudWatchMetrics"]:
            points = self.data.setdefault(directive["Namespace"], [])
            for dimension_set in directive["Dimensions"]:
                dimensions = [{"Name": name, "Value": str(document[name])} for name in dimension_set]
                for metric in directive["Metrics"]:
                    values = document[metric["Name"]]
                    for value in values if isinstance(values, list) else [values]:
                        points.append(
                            {
                                "MetricName": metric["Name"],
                                "Dimensions": dimensions,
                                "Timestamp": at,
                                "Value": float(value),
                                "Unit": metric.get("Unit", "None"),
                            }
                        )

    def publish(self, client: Any) -> int:
        sent = 0
        for namespace, points in self.data.items():
            for start in range(0, len(points), _PUT_BATCH):
                client.put_metric_data(Namespace=namespace, MetricData=points[start : start + _PUT_BATCH])
                sent += len(points[start : start + _PUT_BATCH])
        return sent

"""One source of truth: the dashboard and alarms in template.yaml use exactly the metrics the code emits
(llm_relay.metrics.CATALOGUE) with the same dimension sets, and every emitted metric is on the dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from llm_relay.metrics import CATALOGUE, REJECTION_REASONS, REJECTIONS, SPECS, STREAMS
from llm_relay.termination import TerminationReason
from llm_relay_dev.table import load_template

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "LLMRelay"
SERVICE = "llm-relay"
SEARCH = re.compile(r"SEARCH\('\{(?P<schema>[^}]*)\} MetricName=\"(?P<name>[^\"]+)\"'")

# A metric reference: (namespace, name, {dimension: value or None for "any value" (SEARCH)}).
Ref = tuple[str, str, dict[str, str | None]]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO / "template.yaml")


def _resolve(value: Any) -> Any:
    """The few intrinsic functions the dashboard and alarms use, resolved with the default parameters."""
    if isinstance(value, dict) and value.get("Ref") == "MetricsNamespace":
        return NAMESPACE
    if isinstance(value, dict) and value.get("Ref") == "RelayFunction":
        return "relay-fn"
    return value


def dashboard(template: dict[str, Any]) -> dict[str, Any]:
    body = template["Resources"]["RelayDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    for name, value in {"MetricsNamespace": NAMESPACE, "AWS::Region": "us-east-1", "RelayFunction": "relay-fn"}.items():
        body = body.replace("${" + name + "}", value)
    assert "${" not in body
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def dashboard_refs(body: dict[str, Any]) -> list[Ref]:
    refs: list[Ref] = []
    for widget in body["widgets"]:
        for entry in widget["properties"].get("metrics", []):
            if isinstance(entry[0], dict):
                match = SEARCH.search(entry[0]["expression"])
                assert match, f"unreadable expression {entry[0]}"
                namespace, *dimensions = [part.strip() for part in match["schema"].split(",")]
                refs.append((namespace, match["name"], dict.fromkeys(dimensions)))
            else:
                plain = [part for part in entry if not isinstance(part, dict)]
                namespace, name, *pairs = plain
                refs.append((namespace, name, dict(zip(pairs[::2], pairs[1::2], strict=True))))
    return refs


def alarm_refs(template: dict[str, Any]) -> list[Ref]:
    refs: list[Ref] = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        metrics = [query["MetricStat"]["Metric"] for query in props.get("Metrics", []) if "MetricStat" in query]
        if "MetricName" in props:
            metrics.append(props)
        for metric in metrics:
            dims = {d["Name"]: _resolve(d["Value"]) for d in metric.get("Dimensions", [])}
            refs.append((_resolve(metric["Namespace"]), metric["MetricName"], dims))
    return refs


def check_ref(ref: Ref) -> None:
    namespace, name, dims = ref
    if namespace.startswith("AWS/"):
        return
    assert namespace == NAMESPACE
    assert name in SPECS, f"{name} is on the dashboard or an alarm but the code never emits it"
    sets = {frozenset(dimension_set) for dimension_set in SPECS[name].dimension_sets}
    assert frozenset(dims) in sets, f"{name} is emitted with {SPECS[name].dimension_sets}, not {sorted(dims)}"
    if dims.get("service") is not None:
        assert dims["service"] == SERVICE
    if name == STREAMS and dims.get("reason") is not None:
        assert dims["reason"] in {r.value for r in TerminationReason}
    if name == REJECTIONS and dims.get("reason") is not None:
        assert dims["reason"] in REJECTION_REASONS


def test_every_dashboard_metric_is_one_the_code_emits(template: dict[str, Any]) -> None:
    refs = dashboard_refs(dashboard(template))
    assert len(refs) > 20
    for ref in refs:
        check_ref(ref)


def test_every_alarm_metric_is_one_the_code_emits(template: dict[str, Any]) -> None:
    refs = alarm_refs(template)
    assert {name for _, name, _ in refs} >= {"StreamsTerminated", "TimeToFirstToken", "Throttles"}
    for ref in refs:
        check_ref(ref)


def test_every_emitted_metric_is_on_the_dashboard(template: dict[str, Any]) -> None:
    shown = {name for namespace, name, _ in dashboard_refs(dashboard(template)) if namespace == NAMESPACE}
    assert shown == {spec.name for spec in CATALOGUE}


def test_every_termination_and_rejection_reason_has_its_line(template: dict[str, Any]) -> None:
    refs = dashboard_refs(dashboard(template))
    reasons = {dims["reason"] for _, name, dims in refs if name == STREAMS}
    rejections = {dims["reason"] for _, name, dims in refs if name == REJECTIONS}
    assert reasons == {r.value for r in TerminationReason}
    assert rejections == set(REJECTION_REASONS)


def test_upstream_error_rate_alarm_counts_every_reason(template: dict[str, Any]) -> None:
    props = template["Resources"]["UpstreamErrorRateAlarm"]["Properties"]
    counted = {q["MetricStat"]["Metric"]["Dimensions"][0]["Value"] for q in props["Metrics"] if "MetricStat" in q}
    assert counted == {r.value for r in TerminationReason}
    total = next(q for q in props["Metrics"] if q["Id"] == "total")["Expression"]
    ids = {q["Id"] for q in props["Metrics"] if "MetricStat" in q}
    assert set(re.findall(r"[a-z]+", total)) == ids


def test_alarms_notify_the_optional_topic_and_dashboard_url_is_output(template: dict[str, Any]) -> None:
    alarms = [r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert len(alarms) == 4
    for alarm in alarms:
        assert alarm["Properties"]["AlarmActions"]["Fn::If"][0] == "HasAlarmTopic"
    assert "dashboards:name=${RelayDashboard}" in template["Outputs"]["DashboardUrl"]["Value"]["Fn::Sub"]

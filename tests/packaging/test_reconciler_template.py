"""The ledger's reconciler in template.yaml: a function on a one-minute EventBridge Scheduler schedule running the
same package, a least-privilege role, its metric on the dashboard and an alarm when it settles anything; and the
table's two sparse indexes it and the relay read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_relay.metrics import RECONCILED_LOST
from llm_relay_dev.table import load_template
from tests.packaging.conftest import REPO
from tests.packaging.test_dashboard import dashboard, dashboard_refs
from tests.packaging.test_template import _transformed


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO / "template.yaml")


def test_the_reconciler_runs_the_relay_package_every_minute(template):
    # GIVEN the reconciler function
    props = template["Resources"]["ReconcilerFunction"]["Properties"]
    # THEN it runs the same code (no web adapter) on an EventBridge Scheduler rule every minute
    assert props["CodeUri"] == "functions/relay/"
    assert props["Handler"] == "llm_relay.reconcile_handler.handler"
    (event,) = props["Events"].values()
    assert event["Type"] == "ScheduleV2"
    assert event["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    assert props["Environment"]["Variables"]["RELAY_TABLE_NAME"] == {"Ref": "RelayTable"}


def test_the_reconciler_role_reads_the_open_index_and_writes_items_only(template):
    # GIVEN the reconciler's policy statements
    (policy,) = template["Resources"]["ReconcilerFunction"]["Properties"]["Policies"]
    granted = {
        (action, json.dumps(s["Resource"], sort_keys=True))
        for s in policy["Statement"]
        for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    table = json.dumps({"Fn::GetAtt": ["RelayTable", "Arn"]}, sort_keys=True)
    index = json.dumps({"Fn::Sub": "${RelayTable.Arn}/index/open"}, sort_keys=True)
    # THEN: item reads and the settlement transaction's writes on the table, Query on the open index; no Scan
    expected = {(f"dynamodb:{a}", table) for a in ("GetItem", "PutItem", "UpdateItem")}
    assert granted == expected | {("dynamodb:Query", index)}
    # AND its writes reach only the request items and the keys' limit, spend and usage items, never key items
    writes = [s for s in policy["Statement"] if {"dynamodb:PutItem", "dynamodb:UpdateItem"} & set(s["Action"])]
    leading = [s["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] for s in writes]
    assert leading == [["REQ#*", "KEY#*"]]


def test_the_schedule_has_its_own_role_that_may_only_invoke_the_reconciler():
    # GIVEN the deployed form of the template
    resources = _transformed()["Resources"]
    schedules = [r for r in resources.values() if r["Type"] == "AWS::Scheduler::Schedule"]
    # THEN one schedule targets the reconciler, through a role allowed to invoke that function only
    (schedule,) = schedules
    props = schedule["Properties"]
    assert props["ScheduleExpression"] == "rate(1 minute)"
    assert props["Target"]["Arn"] == {"Fn::GetAtt": ["ReconcilerFunction", "Arn"]}
    role_name = props["Target"]["RoleArn"]["Fn::GetAtt"][0]
    statements = [s for p in resources[role_name]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert {json.dumps(s["Action"]) for s in statements} == {json.dumps("lambda:InvokeFunction")}
    assert all("ReconcilerFunction" in json.dumps(s["Resource"]) for s in statements)


def test_lost_requests_are_on_the_dashboard_and_alarm_above_zero(template):
    # GIVEN the dashboard and the alarm
    names = {name for _, name, _ in dashboard_refs(dashboard(template))}
    alarm = template["Resources"]["LostRequestsAlarm"]["Properties"]
    # THEN the reconciler's metric is on the dashboard, and any request settled as lost raises the alarm
    assert RECONCILED_LOST in names
    assert alarm["MetricName"] == RECONCILED_LOST
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0
    assert alarm["Statistic"] == "Sum" and alarm["Period"] == 60


def test_the_ledger_indexes_are_sparse_and_keys_only(template):
    # GIVEN the table's indexes
    indexes = {i["IndexName"]: i for i in template["Resources"]["RelayTable"]["Properties"]["GlobalSecondaryIndexes"]}
    # THEN the reconciler's and the earliest lease's indexes are keyed by lease expiry and project keys only
    for name, partition in (("open", "open_shard"), ("leases", "lease_key")):
        keys = [(k["AttributeName"], k["KeyType"]) for k in indexes[name]["KeySchema"]]
        assert keys == [(partition, "HASH"), ("lease_until", "RANGE")]
        assert indexes[name]["Projection"] == {"ProjectionType": "KEYS_ONLY"}

"""The one translation of botocore's errors into StoreUnavailable, and the client factory (no network: the
Stubber answers, and a transport error is raised by the test itself)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from botocore.stub import Stubber

from llm_relay.dynamo.client import make_client, store_call
from llm_relay.dynamo.request_store import RequestStore
from llm_relay.errors import ServiceUnavailable, StoreUnavailable


@pytest.fixture
def stubbed() -> Any:
    client = boto3.client("dynamodb", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(client) as stubber:
        yield client, stubber


def test_a_failure_becomes_store_unavailable_in_one_format(stubbed: Any) -> None:
    client, stubber = stubbed
    # GIVEN DynamoDB throttling past botocore's retries
    stubber.add_client_error("get_item", "ProvisionedThroughputExceededException")
    # WHEN a store reads THEN it sees StoreUnavailable, a 503 at the HTTP edge
    expected = r"^DynamoDB GetItem: ProvisionedThroughputExceededException$"
    with pytest.raises(StoreUnavailable, match=expected) as got, store_call("GetItem"):
        client.get_item(TableName="t", Key={"pk": {"S": "a"}, "sk": {"S": "b"}})
    assert isinstance(got.value, ServiceUnavailable) and got.value.status_code == 503
    assert isinstance(got.value.__cause__, ClientError)


def test_a_transport_error_becomes_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match=r"^DynamoDB Query: EndpointConnectionError$"), store_call("Query"):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")


@pytest.mark.parametrize(
    ("failure", "unknown"),
    [
        (ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "TransactWriteItems"), False),
        (ClientError({"Error": {"Code": "ValidationException"}}, "TransactWriteItems"), False),
        (ClientError({"Error": {"Code": "InternalServerError"}}, "TransactWriteItems"), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), False),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), True),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:9"), True),
    ],
    ids=["throttled", "invalid", "server-error", "never-reached", "read-timeout", "closed-mid-answer"],
)
def test_a_failure_says_whether_the_write_may_have_been_applied(failure: Exception, unknown: bool) -> None:
    # WHEN a write fails THEN the error says whether it may have been applied (admission then gives it back
    # before answering, and fails open only once nothing is held)
    with pytest.raises(StoreUnavailable) as got, store_call("TransactWriteItems"):
        raise failure
    assert got.value.outcome_unknown is unknown


def test_a_refused_condition_is_an_answer_for_the_store(stubbed: Any) -> None:
    client, stubber = stubbed
    # GIVEN a cancel for a request that is unknown or another key's
    stubber.add_client_error("update_item", "ConditionalCheckFailedException")
    # WHEN the cancel mark is set THEN the store answers None, not an error
    assert RequestStore("t", client).request_cancel("req_1", "rk_a") is None
    # AND a cancelled transaction passes through store_call for the limits store to read its reasons
    stubber.add_client_error("transact_write_items", "TransactionCanceledException")
    with pytest.raises(ClientError), store_call("TransactWriteItems"):
        client.transact_write_items(
            TransactItems=[{"ConditionCheck": {"TableName": "t", "Key": {}, "ConditionExpression": "x"}}]
        )


def test_the_region_is_the_given_one_or_the_sessions() -> None:
    session = boto3.session.Session(region_name="ap-south-1", aws_access_key_id="x", aws_secret_access_key="y")
    assert make_client(session=session).meta.region_name == "ap-south-1"
    assert make_client("http://127.0.0.1:9", "eu-west-2", session=session).meta.region_name == "eu-west-2"

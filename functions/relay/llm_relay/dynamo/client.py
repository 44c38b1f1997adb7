"""The DynamoDB client, and the one place where botocore's errors become the relay's.

The client is built once by whoever wires the process (the app factory, the CLI, a test) and shared by every
store: one connection pool, one retry policy. The region is the configured one (`AWS_REGION`) or else the boto3
session's own (environment, config file); never a guess, so a missing region fails loudly instead of writing to
another region's table.

Every store call runs under `store_call`: a `ClientError` or `BotoCoreError` becomes `StoreUnavailable`, with one
message format, except the two codes that are answers rather than failures (a refused condition, a cancelled
transaction), which the store that asked for them turns into a domain result.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import boto3
import botocore.exceptions
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import StoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

CONDITION_FAILED = "ConditionalCheckFailedException"
TRANSACTION_CANCELLED = "TransactionCanceledException"
_ANSWERS = frozenset({CONDITION_FAILED, TRANSACTION_CANCELLED})
# DynamoDB's own failures, after which a write may or may not have been applied (a throttle or a validation error
# is a refusal: nothing was).
_SERVER_FAILURES = frozenset({"InternalServerError", "ServiceUnavailable", "InternalFailure"})

# botocore retries throttling and transient errors itself (standard mode); the timeouts bound each attempt. Sized
# for the ledger's bounds (docs/design.md, "The ledger loses nothing"): DynamoDB answers single-digit milliseconds,
# so 1 s per attempt and two attempts (~2 s plus one jittered backoff) bound a key lookup or a cancel poll;
# admission and finalization add their own overall limits (RELAY_ADMISSION_TIMEOUT_S, RELAY_FINALIZE_TIMEOUT_S) on top.
# No client-side parameter validation: every request is built by the stores' code from typed values (boto3's
# serializer), and DynamoDB refuses a malformed one itself; botocore's walk over the request's shapes costs about a
# tenth of a write's client CPU, paid on every write. The local DynamoDB (moto) refuses most malformed requests as
# DynamoDB does, not all (an empty transaction, a `Limit` of 0 pass it), so a store's own tests say what it sends.
CONNECT_TIMEOUT_S = 0.5
READ_TIMEOUT_S = 1.0
_CONFIG = Config(
    retries={"total_max_attempts": 2, "mode": "standard"},
    connect_timeout=CONNECT_TIMEOUT_S,
    read_timeout=READ_TIMEOUT_S,
    max_pool_connections=64,
    parameter_validation=False,
)


def make_client(
    endpoint_url: str | None = None, region: str | None = None, *, session: boto3.session.Session | None = None
) -> DynamoDBClient:
    """One client per process. `region` None: the session's region; `endpoint_url` None: AWS itself."""
    session = session or boto3.session.Session()
    return session.client("dynamodb", endpoint_url=endpoint_url, region_name=region, config=_CONFIG)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def unavailable(operation: str, detail: str, *, outcome_unknown: bool = False) -> StoreUnavailable:
    """The store error, in its one message format: `DynamoDB <operation>: <what went wrong>`."""
    return StoreUnavailable(f"DynamoDB {operation}: {detail}", outcome_unknown=outcome_unknown)


@contextmanager
def store_call(operation: str) -> Iterator[None]:
    """Run one DynamoDB call: failures raise `StoreUnavailable`; a refused condition or a cancelled
    transaction passes through as the `ClientError` it is, for the calling store to interpret."""
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        if code in _ANSWERS:
            raise
        raise unavailable(operation, code, outcome_unknown=code in _SERVER_FAILURES) from exc
    except BotoCoreError as exc:
        # Never reached (refused, or no connection in time): nothing was applied. Anything else (a read timeout,
        # a connection closed mid-answer) may have been.
        never_sent = isinstance(exc, botocore.exceptions.ConnectionError)
        raise unavailable(operation, type(exc).__name__, outcome_unknown=not never_sent) from exc

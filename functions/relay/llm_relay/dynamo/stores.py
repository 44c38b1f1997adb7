"""The stores over one table and one client, as the app and the CLI wire them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .budget_store import BudgetStore
from .client import make_client
from .key_store import KeyStore
from .limits_store import LimitsStore
from .request_store import RequestStore
from .usage_store import UsageStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from ..settings import Settings


@dataclass(frozen=True, slots=True)
class Stores:
    table_name: str
    client: DynamoDBClient
    keys: KeyStore
    requests: RequestStore
    limits: LimitsStore
    usage: UsageStore
    budgets: BudgetStore

    @classmethod
    def create(cls, table_name: str, client: DynamoDBClient | None = None) -> Stores:
        """Every store on one client (one connection pool): the given one, or one from the boto3 session."""
        client = client or make_client()
        return cls(
            table_name,
            client,
            KeyStore(table_name, client),
            RequestStore(table_name, client),
            LimitsStore(table_name, client),
            UsageStore(table_name, client),
            BudgetStore(table_name, client),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Stores:
        """The relay's table, at the configured endpoint (unset: AWS) and region (unset: the session's)."""
        return cls.create(settings.table_name, make_client(settings.dynamodb_endpoint, settings.aws_region))

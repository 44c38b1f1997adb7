"""The DynamoDB adapter: one client (client.py), one table layout (layout.py), one store per kind of item.

client.py         the client factory, and the one translation of botocore errors into StoreUnavailable
layout.py         every item's keys, attributes and TTL: the table's description
key_store.py      API keys (get by hash or id, put, replace, list)
request_store.py  in-flight requests (the request item, cancel marks)
limits_store.py   admission and settlement transactions, counters
budget_store.py   budget reservations: the admission and settlement parts, the stream's extension, the release
usage_store.py    usage records of refused requests, usage and spend queries
stores.py         the stores on one client, as the app and the CLI wire them
"""

from __future__ import annotations

from ..errors import StoreUnavailable
from .budget_store import BudgetStore, release_ops
from .client import make_client
from .key_store import KeyStore
from .layout import request_item
from .limits_store import AdmitResult, LimitsStore
from .request_store import RequestStore
from .stores import Stores
from .usage_store import UsageStore

__all__ = [
    "AdmitResult",
    "BudgetStore",
    "KeyStore",
    "LimitsStore",
    "RequestStore",
    "StoreUnavailable",
    "Stores",
    "UsageStore",
    "make_client",
    "release_ops",
    "request_item",
]

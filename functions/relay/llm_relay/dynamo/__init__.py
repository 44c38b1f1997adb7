"""The DynamoDB adapter: one client (client.py), one table layout (layout.py), one store per kind of item.

client.py         the client factory, and the one translation of botocore errors into StoreUnavailable
layout.py         every item's keys, attributes and TTL: the table's description
key_store.py      API keys (get by hash or id, put, replace, list)
request_store.py  in-flight requests (the request item, cancel marks)
limits_store.py   admission and settlement transactions, counters
usage_store.py    usage records of refused requests, usage and spend queries
stores.py         the four stores on one client, as the app and the CLI wire them
"""

from __future__ import annotations

from ..errors import StoreUnavailable
from .client import make_client
from .key_store import KeyStore
from .layout import request_item
from .limits_store import AdmitResult, LimitsStore, Settlement
from .request_store import RequestStore
from .stores import Stores
from .usage_store import UsageStore

__all__ = [
    "AdmitResult",
    "KeyStore",
    "LimitsStore",
    "RequestStore",
    "Settlement",
    "StoreUnavailable",
    "Stores",
    "UsageStore",
    "make_client",
    "request_item",
]

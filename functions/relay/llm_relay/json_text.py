"""The relay's one way of writing JSON on the wire (pure): compact, and UTF-8 as it is (no `\\u` escapes). The
framings, every API's events, and the NDJSON and embeddings bodies the relay sends upstream use it."""

from __future__ import annotations

import json
from typing import Any


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)

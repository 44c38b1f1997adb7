"""The relay's one way of writing JSON on the wire (pure): compact, and UTF-8 as it is (no `\\u` escapes). The
framings, every API's events, and the NDJSON and embeddings bodies the relay sends upstream use it."""

from __future__ import annotations

import json
from typing import Any

# One encoder for the process: `json.dumps` with arguments builds a new encoder on every call, and this runs once
# per relayed chunk.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: Any) -> str:
    return _ENCODER.encode(obj)

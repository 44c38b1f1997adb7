"""An encoder of AWS event-stream messages, for the local Bedrock server (test tooling, never the relay's code).

The relay only reads event streams, and through botocore's own parser; this writes them so that parser has real
input: a prelude (total length, headers length, their CRC32), headers (all of string type 7), the payload, and
the CRC32 of everything before it. tests/unit/test_eventstream_encoder.py proves it against botocore's decoder.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

__all__ = ["encode_event", "encode_exception", "encode_message"]

_STRING = 7


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string-valued `headers` and `payload`."""
    encoded_headers = b"".join(_header(name, value) for name, value in headers.items())
    total = 12 + len(encoded_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def encode_event(event_type: str, body: dict[str, Any]) -> bytes:
    """A Converse event (`messageStart`, `contentBlockDelta`, ..., `metadata`) with its JSON payload."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, _json(body))


def encode_exception(exception_type: str, message: str) -> bytes:
    """An exception in the stream (`modelStreamErrorException`, `throttlingException`, ...)."""
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode_message(headers, _json({"message": message}))


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", _STRING, len(raw_value)) + raw_value


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()

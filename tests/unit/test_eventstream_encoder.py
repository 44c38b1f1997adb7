"""The local Bedrock server's event-stream encoder, proved against botocore's own decoder."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from llm_relay_dev.eventstream import encode_event, encode_exception, encode_message


def _decode(raw: bytes) -> list[tuple[Any, bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return [(message.headers, message.payload) for message in buffer]


def test_botocore_reads_an_encoded_event_with_its_headers_and_payload() -> None:
    # GIVEN an event encoded by the dev encoder
    raw = encode_event("contentBlockDelta", {"delta": {"text": "héllo"}, "contentBlockIndex": 0})
    # WHEN botocore's buffer decodes it THEN headers and payload are what was encoded, CRCs check out
    [(headers, payload)] = _decode(raw)
    assert headers == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert json.loads(payload) == {"delta": {"text": "héllo"}, "contentBlockIndex": 0}


def test_messages_back_to_back_and_an_exception() -> None:
    raw = encode_event("messageStart", {"role": "assistant"}) + encode_exception("throttlingException", "slow down")
    decoded = _decode(raw)
    assert [h[":message-type"] for h, _ in decoded] == ["event", "exception"]
    assert decoded[1][0][":exception-type"] == "throttlingException"
    assert json.loads(decoded[1][1]) == {"message": "slow down"}


def test_an_empty_message_and_a_flipped_bit() -> None:
    assert _decode(encode_message({}, b"")) == [({}, b"")]
    raw = bytearray(encode_message({"a": "b"}, b"payload"))
    raw[-6] ^= 1  # a payload byte: the message CRC no longer matches
    with pytest.raises(ChecksumMismatch):
        _decode(bytes(raw))

"""The function-URL front's downstream side: full speed for the first bytes, then throttled; a client that left
is not told to the relay. Real time only as a lower bound (a loaded machine can only make it slower)."""

from __future__ import annotations

import time

import pytest
from starlette.types import Message

from llm_relay_dev.function_url import FrontLimits, _Downstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_past_the_full_speed_bytes_the_rate_is_capped() -> None:
    # GIVEN 1,000 bytes at full speed, then 10,000 bytes/s
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    out = _Downstream(send, FrontLimits(full_speed_bytes=1000, throttled_bytes_per_s=10_000))
    # WHEN 1,000 bytes and then 2,000 more go out
    started = time.monotonic()
    await out.body(b"x" * 1000)
    for _ in range(20):
        await out.body(b"x" * 100)
    # THEN the next 2,000 took at least 0.19 s (2,000 / 10,000, less one chunk)
    assert time.monotonic() - started >= 0.19
    assert out.sent == 3000 and len(sent) == 21


async def test_a_client_that_left_is_not_passed_on() -> None:
    async def send(message: Message) -> None:
        raise OSError("connection reset")

    out = _Downstream(send, FrontLimits())
    await out.body(b"data")  # no exception: the front keeps reading the relay
    await out.body(b"more")
    assert out.gone

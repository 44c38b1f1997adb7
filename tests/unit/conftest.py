"""Unit tests never open a socket: every IPv4/IPv6 `connect`, `connect_ex`, `bind` and `sendto` raises
`NetworkBlocked` for the duration of each unit test (asyncio's and httpx's socket paths go through these
methods too). Side effects in unit tests are injected (`httpx.MockTransport`, fake stores, fake clocks)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

_INET = (socket.AF_INET, socket.AF_INET6)
_GUARDED = ("connect", "connect_ex", "bind", "sendto")


class NetworkBlocked(RuntimeError):
    """Raised by a unit test that tried to use the network. Not an OSError on purpose: code under test that
    handles connection failures must not swallow it and pass by accident."""


def _guard(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if self.family in _INET:
            self.close()  # callers that only expect OSError would leak it (and ResourceWarning is an error)
            raise NetworkBlocked(f"unit tests never open a socket: {name}{args!r}")
        return original(self, *args, **kwargs)

    return guarded


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _GUARDED:
        monkeypatch.setattr(socket.socket, name, _guard(name, getattr(socket.socket, name)))

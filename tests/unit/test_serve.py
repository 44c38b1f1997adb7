"""The production entry point (`llm_relay.serve`, what run.sh execs) and the refusal it relies on: no app is
built without an upstream URL, and a refused configuration is one line on stderr, not a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from llm_relay import serve
from llm_relay.app import create_app
from llm_relay.errors import ConfigurationError, RelayError
from llm_relay.settings import Settings


@pytest.fixture
def no_relay_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "RELAY_UPSTREAM_URL",
        "RELAY_UPSTREAMS",
        "RELAY_DEADLINE_MARGIN_S",
        "RELAY_FUNCTION_TIMEOUT_S",
        "PORT",
    ):
        monkeypatch.delenv(name, raising=False)


def test_create_app_refuses_without_an_upstream_url(no_relay_env: None) -> None:
    # GIVEN settings without an upstream URL and no injected transport
    # WHEN the app is built THEN it is refused, naming the variable to set
    with pytest.raises(ConfigurationError, match="RELAY_UPSTREAM_URL"):
        create_app(Settings())


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[{"name": "a", "kind": "ollama", "models": ["*"]}]', "RELAY_UPSTREAMS[0]: Value error, upstream 'a' of kind"),
        (
            '[{"name": "a", "kind": "ndjson", "url": "http://a/chat", "models": ["*"], "fields": {"contnet": "x"}}]',
            "RELAY_UPSTREAMS: upstream 'a': ",
        ),
    ],
)
def test_create_app_refuses_an_upstream_table_that_would_route_wrongly(
    no_relay_env: None, monkeypatch: pytest.MonkeyPatch, table: str, message: str
) -> None:
    # GIVEN a table with an entry that cannot work (no url; a field path the ndjson kind does not know)
    monkeypatch.setenv("RELAY_UPSTREAMS", table)
    # WHEN the app is built THEN it is refused at start-up, naming the variable and the entry
    with pytest.raises(ConfigurationError) as refused:
        create_app(Settings())
    assert message in str(refused.value)


def test_a_configuration_error_is_never_a_client_error() -> None:
    # A start-up refusal has no HTTP status: no exception handler may turn it into an answer.
    assert not issubclass(ConfigurationError, RelayError)


def test_refusal_is_one_line_on_stderr_and_exit_status_2(
    no_relay_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # WHEN the entry point builds the app without an upstream URL
    with pytest.raises(SystemExit) as exited:
        serve.build_app()
    # THEN it exits 2 with one line naming RELAY_UPSTREAM_URL
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RELAY_UPSTREAM_URL" in err and "Traceback" not in err


def test_invalid_settings_are_one_line_too(
    no_relay_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_UPSTREAM_URL", "http://upstream.invalid/v1")
    monkeypatch.setenv("RELAY_FUNCTION_TIMEOUT_S", "3")
    monkeypatch.setenv("RELAY_DEADLINE_MARGIN_S", "5")
    with pytest.raises(SystemExit):
        serve.build_app()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RELAY_DEADLINE_MARGIN_S" in err


def test_uvicorn_gets_the_options_run_sh_always_passed(no_relay_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a valid configuration on port 9123
    monkeypatch.setenv("RELAY_UPSTREAM_URL", "http://upstream.invalid/v1")
    monkeypatch.setenv("PORT", "9123")
    runs: list[tuple[uvicorn.Config, list[Any]]] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: runs.append((self.config, sockets)))
    bound: list[tuple[str, int]] = []

    def listening_socket(host: str, port: int) -> _FakeSocket:
        bound.append((host, port))
        return _FakeSocket()

    # WHEN the entry point runs
    serve.main(listen=listening_socket)  # type: ignore[arg-type]
    # THEN uvicorn serves the app on loopback, that port, no access log, one-minute keep-alive
    ((config, sockets),) = runs
    assert config.host == "127.0.0.1" and config.port == 9123
    # on the socket with the bounded send buffer, given as the socket object (a file descriptor would be taken for a
    # Unix socket: no TCP_NODELAY on its connections)
    assert bound == [("127.0.0.1", 9123)] and len(sockets) == 1 and isinstance(sockets[0], _FakeSocket)
    assert config.fd is None
    assert config.access_log is False and config.timeout_keep_alive == 60
    # AND its connections get the bounded write buffer
    assert isinstance(config.http, type) and config.http.__name__ == "BoundedWritesProtocol"


class _FakeSocket:
    FD = 99

    def fileno(self) -> int:
        return self.FD


def test_start_up_runs_without_the_garbage_collector_then_freezes_what_it_built(
    no_relay_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an entry point whose app build and server are observed
    seen: dict[str, Any] = {}

    def build_app() -> tuple[object, Settings]:
        seen["collector_on_while_building"] = gc.isenabled()
        return object(), Settings(upstream_url="http://upstream.invalid/v1")

    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: seen.update(collector_on_while_serving=gc.isenabled())
    )
    frozen_before = gc.get_freeze_count()
    try:
        # WHEN it runs
        serve.main(build=build_app, listen=lambda host, port: _FakeSocket())  # type: ignore[arg-type,return-value]
        # THEN the app was built with the collector off, what start-up built is frozen, and it serves with it on
        assert seen == {"collector_on_while_building": False, "collector_on_while_serving": True}
        assert gc.get_freeze_count() > frozen_before
    finally:
        gc.unfreeze()
        gc.enable()


class _RecordingTransport:
    """A transport as uvloop's are: the methods of asyncio's, without being an `asyncio.Transport` subclass."""

    def __init__(self) -> None:
        self.high_water: int | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high


def test_each_connection_pauses_writing_past_the_bounded_write_buffer() -> None:
    # GIVEN the HTTP protocol the entry point gives uvicorn (uvicorn's own, as `http="auto"` picks it)
    protocol = serve.http_protocol()
    assert not isinstance(protocol, str), "uvicorn moved its HTTP protocols: the write buffer is unbounded again"
    transport = _RecordingTransport()

    async def connect() -> None:
        config = uvicorn.Config(lambda scope, receive, send: None, log_config=None)
        made = protocol(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
        made.connection_made(transport)  # type: ignore[arg-type]

    # WHEN a connection is made
    asyncio.run(connect())
    # THEN its transport holds at most WRITE_BUFFER_BYTES before a write waits for the reader
    assert transport.high_water == serve.WRITE_BUFFER_BYTES


def test_a_refusal_is_one_line_even_for_a_message_of_several() -> None:
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stderr(io.StringIO()) as err:
        serve.refuse("first\n  second")
    assert exited.value.code == 2 and err.getvalue() == "llm-relay: refusing to start: first second\n"

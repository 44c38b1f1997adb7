"""`make dynamodb`: a local moto DynamoDB server that handles one request at a time (the dev server, the tests,
the benchmark; needs moto).

Why not moto's `ThreadedMotoServer` as is: moto's TransactWriteItems deep-copies the table, applies the
items one by one and, if one condition fails, puts the copy back, all without a lock. Under concurrent
requests a transaction can see another's half-applied writes, and a cancelled one rolls back writes that
other requests made meanwhile. DynamoDB makes single-item and transactional writes atomic, and the limits
rely on that; so this server lets one request at a time into moto.

And why not werkzeug's development server, which `ThreadedMotoServer` uses: it closes the connection after every
response (it cannot tell where a request body ends), so every DynamoDB call from a relay paid a new TCP connection
and a new server thread, 2.7 times the client's CPU per call, which DynamoDB itself (keep-alive HTTPS) never
costs. waitress serves the same WSGI app with keep-alive connections.

In front of moto, `request_tokens.LedgerFront` honours TransactWriteItems' `ClientRequestToken` as DynamoDB does,
and lets tests inject "applied, then the response was lost".

With `--throttle` (`make dynamodb THROTTLE=1`, `MotoServer(throttle=Throttle(...))`), `throttled_front.ThrottleFront`
charges every request to its partitions and refuses what a hot one cannot take, as DynamoDB does (1,000 write and
3,000 read units a second per partition key value, of the table and of each index; `throttling.py`).

With requests serialized, a transaction needs no copy of the whole table (moto's own copy makes every transaction
cost time proportional to the table: ~80 ms at 1000 items, so a long-running `make dev` would slow down): this
module swaps in a TransactWriteItems that checks every condition first, then applies the items, restoring
just the touched items if applying fails.

    python -m llm_relay_dev.local_dynamodb [-p PORT] [--table NAME]    # what `make dynamodb` runs
        [--throttle [--write-units-per-s 1000] [--read-units-per-s 3000] [--scale 1]]

On its own it serves in the foreground until SIGINT/SIGTERM, with the relay table created from template.yaml,
so several relays (`make dev` with `RELAY_DYNAMODB_ENDPOINT`), the CLI and the benchmark can share one state.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import boto3

from .request_tokens import LedgerFront
from .table import create_table
from .throttled_front import ThrottleFront
from .throttling import READ_UNITS_PER_S, WRITE_UNITS_PER_S, Throttle


class MotoServer:
    """`with MotoServer() as endpoint:` or `start()` / `stop()`; `endpoint` is `http://127.0.0.1:<port>`.
    `throttle`: partitions throttled as DynamoDB's are; its counters (`throttle.throttled`, `consumed_write`, ...)
    are read while the server runs."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, throttle: Throttle | None = None) -> None:
        self._host = host
        self._port = port
        self.throttle = throttle
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    def start(self) -> str:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from waitress.server import create_server

        logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth": requests wait by design
        _install_check_then_apply_transactions()
        _install_exponent_numbers()
        _install_cached_module_list()
        _install_cached_method_names()
        moto: Callable[..., Iterable[bytes]] = DomainDispatcherApplication(create_backend_app)
        if self.throttle is not None:
            moto = ThrottleFront(moto, self.throttle)
        app = _serialized(LedgerFront(moto))
        # Connections stay open between requests (boto3 keeps a pool of them); one request at a time runs in moto.
        # poll(), not select(): select() refuses a descriptor above 1023, and a process serving in-process (a test
        # session, `make dev`) holds both ends of every connection. An idle connection is closed after a minute
        # (boto3 opens another).
        self._server = create_server(
            app,
            host=self._host,
            port=self._port,
            threads=8,
            connection_limit=4096,
            channel_timeout=60,
            asyncore_use_poll=True,
            ident=None,
        )
        self._thread = threading.Thread(target=self._server.run, name="moto", daemon=True)
        self._thread.start()
        self.endpoint = f"http://{self._host}:{self._server.effective_port}"
        return self.endpoint

    def stop(self) -> None:
        server = self._server
        if server is not None:
            from waitress import wasyncore

            server.task_dispatcher.shutdown()
            # The loop's own thread closes the listener and every connection (an empty map ends the loop): closed from
            # here, a connection accepted meanwhile could keep the loop running, and the loop would wait out its poll.
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serialized(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    """Wrap a WSGI app so one request at a time runs in it, its response body produced inside the lock."""
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            body = app(environ, start_response)
            try:
                return list(body)
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()

    return wrapped


_TRANSACTIONS = threading.RLock()


def _install_cached_module_list() -> None:
    """moto's dispatcher lists its own package directory on every request (about 57 `stat` calls, each releasing
    the GIL) to tell a service name from a host; inside the one-request lock, with one busy thread in the same
    process (a test, or `make dev`'s relay), each of them waits out a 5 ms switch interval, and requests stalled
    past the client's read timeout. The directory does not change while the process runs: list it once."""
    from moto import backends

    if getattr(backends.list_of_moto_modules, "cached", False):
        return
    modules = tuple(backends.list_of_moto_modules())

    def list_of_moto_modules() -> tuple[str, ...]:
        return modules

    list_of_moto_modules.cached = True  # type: ignore[attr-defined]
    backends.list_of_moto_modules = list_of_moto_modules


def _install_cached_method_names() -> None:
    """moto finds the handler of every request by listing its handler class's methods (`inspect.getmembers`),
    about a tenth of the CPU of a PutItem, inside the one-request lock. A class's methods do not change while the
    process runs: list them once per class."""
    from moto.core import responses

    namespace = vars(responses)  # the name as responses.py imported it (moto does not re-export it)
    method_names: Callable[[object], list[str]] = namespace["method_names_from_class"]
    if getattr(method_names, "cached", False):
        return
    listed: dict[object, list[str]] = {}

    def method_names_from_class(clazz: object) -> list[str]:
        names = listed.get(clazz)
        if names is None:
            names = listed[clazz] = method_names(clazz)
        return names

    method_names_from_class.cached = True  # type: ignore[attr-defined]
    namespace["method_names_from_class"] = method_names_from_class


def _install_exponent_numbers() -> None:
    """moto's ADD parses a number as an int unless it has a ".", so a cost like `9E-7` (how Python writes a
    Decimal below 1e-6; DynamoDB accepts it) fails the whole transaction. Parse every number as a Decimal."""
    from decimal import Decimal

    from moto.dynamodb.models.dynamo_type import DDBType, DynamoType

    def add(self: Any, other: Any) -> Any:
        if self.type != other.type or not self.is_number():
            return original_add(self, other)
        return DynamoType({DDBType.NUMBER: f"{Decimal(self.value) + Decimal(other.value)}"})

    def sub(self: Any, other: Any) -> Any:
        if self.type != other.type or not self.is_number():
            return original_sub(self, other)
        return DynamoType({DDBType.NUMBER: f"{Decimal(self.value) - Decimal(other.value)}"})

    original_add, original_sub = DynamoType.__add__, DynamoType.__sub__
    if getattr(DynamoType.__add__, "__name__", "") != "add":
        DynamoType.__add__ = add  # type: ignore[method-assign]
        DynamoType.__sub__ = sub  # type: ignore[method-assign]


def _install_check_then_apply_transactions() -> None:
    """Replace moto's TransactWriteItems (process-wide) with one that copies no table. Idempotent."""
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
    )
    from moto.dynamodb.models import DynamoDBBackend

    if getattr(DynamoDBBackend.transact_write_items, "check_then_apply", False):
        return

    def transact_write_items(backend: Any, transact_items: list[dict[str, Any]]) -> None:
        if len(transact_items) > 100:
            raise TooManyTransactionsException()
        with _TRANSACTIONS:
            ops = [_operation(backend, item, MultipleTransactionsException) for item in transact_items]
            if len({(table, str(sorted(key.items()))) for _, _, table, key in ops}) < len(ops):
                raise MultipleTransactionsException()
            reasons: list[tuple[Any, Any, Any]] = []
            for _, op, table, key in ops:
                current = backend.get_item(table, key)
                condition = op.get("ConditionExpression")
                if condition is None or get_filter_expression(
                    condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
                ).expr(current):
                    reasons.append((None, None, None))
                    continue
                old = None
                if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current is not None:
                    old = current.to_json()["Attributes"]
                reasons.append(("ConditionalCheckFailed", ConditionalCheckFailed().message, old))
            if any(code is not None for code, _, _ in reasons):
                raise TransactionCanceledException(reasons)
            _apply(backend, ops)

    transact_write_items.check_then_apply = True  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign,assignment]


def _operation(backend: Any, item: dict[str, Any], invalid: type[Exception]) -> tuple[str, dict[str, Any], str, Any]:
    """(kind, op, table name, key) of one transaction item."""
    if len(item) != 1:
        raise invalid()
    kind, op = next(iter(item.items()))
    if kind not in ("ConditionCheck", "Put", "Delete", "Update"):
        raise ValueError(f"unsupported transaction operation {kind}")
    table_name = op["TableName"]
    if kind == "Put":
        table = backend.get_table(table_name)
        names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
        return kind, op, table_name, {name: op["Item"][name] for name in names}
    return kind, op, table_name, op["Key"]


def _apply(backend: Any, ops: list[tuple[str, dict[str, Any], str, Any]]) -> None:
    """Apply the checked items; if one fails, put the touched items back as they were and re-raise."""
    before = []
    for _, _, table, key in ops:
        current = backend.get_item(table, key)
        before.append((table, key, None if current is None else current.to_json()["Attributes"]))
    try:
        for kind, op, table, key in ops:
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if kind == "Put":
                backend.put_item(table, op["Item"])
            elif kind == "Update":
                backend.update_item(
                    table,
                    key,
                    update_expression=op["UpdateExpression"],
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
            elif kind == "Delete":
                backend.delete_item(table, key)
    except Exception:
        for table, key, attributes in before:
            if attributes is None:
                backend.delete_item(table, key)
            else:
                backend.put_item(table, attributes)
        raise


READY = "local DynamoDB ready"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="local DynamoDB (moto, one request at a time)")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("DYNAMODB_PORT") or 8000))
    parser.add_argument("--table", default=os.environ.get("RELAY_TABLE_NAME") or "llm-relay")
    parser.add_argument("--throttle", action="store_true", help="throttle hot partitions as DynamoDB does")
    parser.add_argument("--write-units-per-s", type=float, default=WRITE_UNITS_PER_S, help="per partition")
    parser.add_argument("--read-units-per-s", type=float, default=READ_UNITS_PER_S, help="per partition")
    parser.add_argument("--scale", type=float, default=1.0, help="wall seconds a simulated second lasts")
    return parser.parse_args(argv)


def throttle_of(args: argparse.Namespace) -> Throttle | None:
    if not args.throttle:
        return None
    return Throttle(args.write_units_per_s, args.read_units_per_s, scale=args.scale)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve in the foreground: start, create the table, print the ready line, stop on SIGINT or SIGTERM.
    The signals are blocked before the server thread starts, so only `sigwait` here receives them."""
    args = parse_args(argv)
    for name, value in (("AWS_ACCESS_KEY_ID", "dev"), ("AWS_SECRET_ACCESS_KEY", "dev")):
        os.environ.setdefault(name, value)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = MotoServer(args.host, args.port, throttle=throttle_of(args))
    with server as endpoint:
        create_table(boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1"), args.table)
        print(f"{READY}: {endpoint}  (table {args.table})", flush=True)  # noqa: T201
        if server.throttle is not None:
            limits = f"{args.write_units_per_s:g} write, {args.read_units_per_s:g} read units"
            print(f"  throttled: {limits} per partition per {args.scale:g} s", flush=True)  # noqa: T201
        print(f"  RELAY_DYNAMODB_ENDPOINT={endpoint} make dev", flush=True)  # noqa: T201
        signal.sigwait(stop_signals)


if __name__ == "__main__":
    main()

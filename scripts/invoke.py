"""`make invoke EVENT=events/<file>.json`: the offline twin of `sam local invoke`, through real Lambda parts.

The AWS Lambda Runtime Interface Emulator (the `aws-lambda-rie` binary that ships inside the `aws-sam-cli`
package) runs as a plain process and starts `python -m awslambdaric llm_relay.lambda_handler.handler` as the
function's runtime, exactly as it does inside the Lambda container image; the event is POSTed to the emulator's
invoke endpoint and the Lambda response object is printed as JSON on stdout (several events: a JSON array, one
warm sandbox). No Docker, no AWS: DynamoDB is a local moto server started here (the table built from
template.yaml, the dev key `RELAY_DEV_KEY` created in it) and the upstream is the mock upstream served here,
passed to the function as `RELAY_UPSTREAM_URL` unless that is set already (the app refuses to start without
one). The emulator's and the function's logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llm_relay.dynamo import Stores, make_client
from llm_relay_dev.dev_key import ensure_dev_key
from llm_relay_dev.local_dynamodb import MotoServer
from llm_relay_dev.mock_upstream import mock_upstream_in_thread
from llm_relay_dev.table import create_table, load_template

REPO = Path(__file__).resolve().parent.parent
HANDLER = "llm_relay.lambda_handler.handler"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
DEFAULT_DEV_KEY = "lr-dev-local-key"
FUNCTION_RESOURCE = "RelayFunction"
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "invoke", "AWS_SECRET_ACCESS_KEY": "invoke"}  # moto accepts anything


def find_rie(sam_venv: Path) -> Path:
    """The emulator binary for this machine's architecture inside the installed aws-sam-cli package."""
    arch = "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"
    found = sorted(sam_venv.glob(f"lib/python3*/site-packages/samcli/local/rapid/aws-lambda-rie-{arch}"))
    if not found:
        raise SystemExit(f"aws-lambda-rie-{arch} not found under {sam_venv}: run `make sam` first")
    return found[-1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prepare_table(endpoint: str, table_name: str, dev_key: str) -> None:
    """The relay table exactly as template.yaml declares it, holding the dev key the events use."""
    os.environ.update(LOCAL_CREDENTIALS)
    stores = Stores.create(table_name, make_client(endpoint, "us-east-1"))
    create_table(stores.client, table_name)
    ensure_dev_key(stores.keys, dev_key)


def function_settings(template: dict[str, Any]) -> tuple[str, str]:
    """Timeout and memory size the template gives the function (parameter defaults), as Lambda would pass them."""
    params = template["Parameters"]
    return str(params["FunctionTimeout"]["Default"]), str(params["MemorySize"]["Default"])


def lambda_environment(endpoint: str, upstream: str, table_name: str, timeout: str, memory: str) -> dict[str, str]:
    """What the Lambda service gives the runtime, plus where the local state and the upstream live (a
    `RELAY_UPSTREAM_URL` already set wins). AWS profiles and real credentials are dropped: nothing here may
    reach AWS."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")}
    env.update(LOCAL_CREDENTIALS)
    env.update(
        {
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_LAMBDA_FUNCTION_NAME": FUNCTION_RESOURCE,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_TIMEOUT": timeout,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": memory,
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION_RESOURCE}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "$LATEST",
            "LAMBDA_TASK_ROOT": str(REPO / "functions" / "relay"),
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO / "functions" / "relay"), os.environ.get("PYTHONPATH")])
            ),
            "RELAY_DYNAMODB_ENDPOINT": endpoint,
            "RELAY_TABLE_NAME": table_name,
            "RELAY_FUNCTION_TIMEOUT_S": timeout,
        }
    )
    if not env.get("RELAY_UPSTREAM_URL"):
        env["RELAY_UPSTREAM_URL"] = upstream
    return env


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the emulator exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the emulator did not start listening")


@contextmanager
def emulator(rie: Path, env: dict[str, str]) -> Iterator[str]:
    """The RIE serving the invoke API on a free port, running awslambdaric with the Mangum handler as the
    runtime; yields the invoke URL. Its output (and the function's logs) goes to stderr."""
    port = free_port()
    command = [
        str(rie),
        "--log-level",
        "error",
        "--runtime-interface-emulator-address",
        f"127.0.0.1:{port}",
        "--runtime-api-address",
        f"127.0.0.1:{free_port()}",
        sys.executable,
        "-m",
        "awslambdaric",
        HANDLER,
    ]
    process = subprocess.Popen(
        command,
        env=env,
        cwd=env["LAMBDA_TASK_ROOT"],
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
        stderr=sys.stderr,
        start_new_session=True,
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}{INVOKE_PATH}"
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the emulator's process group (it ends the runtime too), SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


def invoke(url: str, event: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One invocation through the emulator: the Lambda response object the handler returned."""
    request = urllib.request.Request(
        url, data=json.dumps(event).encode(), method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def load_event(path: Path) -> dict[str, Any]:
    """The event in `path`, or SystemExit with one line saying why not (a traceback would hide the file's name)."""
    try:
        event = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"make invoke: no event file {path} (the events are in {REPO / 'events'})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"make invoke: cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"make invoke: {path} is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise SystemExit(f"make invoke: {path} is not an event (a JSON object)")
    return event


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("events", nargs="+", type=Path, help="function-URL (payload 2.0) event files")
    parser.add_argument(
        "--sam-venv", type=Path, default=REPO / ".venv-sam", help="virtualenv holding aws-sam-cli (default: .venv-sam)"
    )
    parser.add_argument("--rie", type=Path, help="path to the aws-lambda-rie binary (default: from --sam-venv)")
    parser.add_argument("--table", default="llm-relay-invoke", help="DynamoDB table name in moto")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    events = [load_event(path) for path in args.events]
    rie = args.rie or find_rie(args.sam_venv)
    timeout, memory = function_settings(load_template(REPO / "template.yaml"))
    dev_key = os.environ.get("RELAY_DEV_KEY") or DEFAULT_DEV_KEY
    with MotoServer() as endpoint, mock_upstream_in_thread() as upstream:
        prepare_table(endpoint, args.table, dev_key)
        env = lambda_environment(endpoint, upstream, args.table, timeout, memory)
        with emulator(rie, env) as url:
            responses = [invoke(url, event, float(timeout) + 10) for event in events]
    print(json.dumps(responses[0] if len(responses) == 1 else responses, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

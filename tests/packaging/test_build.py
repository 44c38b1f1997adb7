"""`sam build` works offline and its artifact runs: the function code plus the dependency layer for this
machine's architecture, on CPython 3.12 with no site-packages (only what Lambda would have: the standard
library, the layer, the function and the runtime's AWS SDK), answer every event, through the Mangum handler
and through `run.sh` (uvicorn, the path the web adapter streams)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Upstream
from tests.packaging.conftest import Built, relay_environment
from tests.packaging.expected import EVENTS_DIR, check_response, event_names, load_event
from tests.packaging.test_run_sh import assert_refused_in_one_line, run_without_upstream
from tests.servers import free_port

pytestmark = pytest.mark.slow

LAYER_MAX_BYTES = 60 * 1024 * 1024  # Lambda allows 250 MB unzipped for function and layers together

# Runs inside the artifact's interpreter: calls the Mangum handler with each event, prints the responses and
# where the relay and its compiled dependency were imported from.
HANDLER_SCRIPT = """
import json, sys
import llm_relay, pydantic_core
from llm_relay.lambda_handler import handler

class Context:
    function_name = "RelayFunction"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:RelayFunction"
    def get_remaining_time_in_millis(self):
        return 900_000

answers = {path: handler(json.load(open(path)), Context()) for path in sys.argv[1:]}
print(json.dumps({"answers": answers, "llm_relay": llm_relay.__file__, "pydantic_core": pydantic_core.__file__}))
"""


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_function_zip_holds_only_the_entry_point_and_the_package(sam_build: Built) -> None:
    # GIVEN the built function
    function = sam_build.function
    # THEN it is run.sh (executable) and the llm_relay package with its data and its bytecode (test_bytecode),
    # no dependencies, no bytecode of another Python
    assert sorted(p.name for p in function.iterdir()) == ["llm_relay", "run.sh"]
    assert os.access(function / "run.sh", os.X_OK)
    assert (function / "llm_relay" / "lambda_handler.py").is_file()
    assert (function / "llm_relay" / "py.typed").is_file()
    assert {p.name.split(".")[1] for p in function.rglob("*.pyc")} == {"cpython-312"}
    assert _size(function) < 2 * 1024 * 1024


DEV_MODULES = {"llm_relay_dev", "mock_upstream", "local_moto", "local_dynamodb", "devserver", "local", "embedded_mock"}
DEV_ONLY_IMPORTS = {"llm_relay_dev", "yaml", "moto", "werkzeug", "pytest", "psutil", "openai"}

# Runs inside the artifact's interpreter: imports every module of the package, prints the ones that failed.
IMPORT_ALL_SCRIPT = """
import importlib, json, pkgutil
import llm_relay
failed = {}
for module in pkgutil.walk_packages(llm_relay.__path__, "llm_relay."):
    try:
        importlib.import_module(module.name)
    except Exception as exc:
        failed[module.name] = repr(exc)
print(json.dumps({"failed": failed, "llm_relay": llm_relay.__file__}))
"""


def _imported_roots(path: Path) -> set[str]:
    """Top-level names a module imports (absolute imports only; relative ones stay inside the package)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_function_artifact_holds_no_dev_tooling(sam_build: Built) -> None:
    # GIVEN the built function
    function = sam_build.function
    # THEN no dev module was copied in: no dev package, no mock upstream, local DynamoDB, dev server
    names = {path.stem for path in function.rglob("*")}
    assert not names & DEV_MODULES, names & DEV_MODULES
    # AND no module of the function imports dev-only code (the layer has none of it)
    offenders = {
        str(path.relative_to(function)): roots & DEV_ONLY_IMPORTS
        for path in function.rglob("*.py")
        if (roots := _imported_roots(path)) & DEV_ONLY_IMPORTS
    }
    assert not offenders, offenders


def test_every_module_of_the_artifact_imports_with_the_layer_alone(
    sam_build: Built, python312: str, runtime_sdk: Path
) -> None:
    # GIVEN the built function and layer on CPython 3.12 without site-packages
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONPATH"] = os.pathsep.join(map(str, (sam_build.function, sam_build.native_layer, runtime_sdk)))
    # WHEN every module of the package is imported
    done = subprocess.run(
        [python312, "-S", "-c", IMPORT_ALL_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    # THEN each one imports from the artifact: nothing it needs is missing from the layer or the runtime
    assert result["llm_relay"].startswith(str(sam_build.function))
    assert result["failed"] == {}


def test_built_run_sh_refuses_to_start_without_an_upstream_url(
    sam_build: Built, python312: str, runtime_sdk: Path, tmp_path: Path
) -> None:
    # GIVEN the built run.sh, `python3` being CPython 3.12 without site-packages, and no RELAY_UPSTREAM_URL
    layer = os.pathsep.join(map(str, (sam_build.native_layer, runtime_sdk)))
    shim_python = tmp_path / "python312-S"
    shim_python.write_text(f'#!/bin/sh\nexec "{python312}" -S "$@"\n')
    shim_python.chmod(0o755)
    # WHEN the adapter would start it
    done = run_without_upstream(sam_build.function / "run.sh", str(shim_python), tmp_path / "bin", layer)
    # THEN it exits non-zero with one line naming the variable, no traceback
    assert_refused_in_one_line(done)


@pytest.mark.parametrize(("arch", "machine"), [("arm64", "aarch64"), ("x86_64", "x86_64")])
def test_each_layer_holds_wheels_for_its_architecture(sam_build: Built, arch: str, machine: str) -> None:
    # GIVEN the layer built for one architecture
    layer = sam_build.layer(arch)
    # THEN its compiled modules are CPython 3.12 builds for that architecture, and it stays small
    native = [p.name for p in layer.rglob("*.so")]
    assert any(name.startswith("_pydantic_core.") for name in native)
    assert all(name.endswith((f".cpython-312-{machine}-linux-gnu.so", ".abi3.so")) for name in native), native
    assert {
        "fastapi",
        "uvicorn",
        "uvloop",
        "httptools",
        "mangum",
        "httpx",
        "pydantic_settings",
        "aws_lambda_powertools",
    } <= {p.name for p in layer.iterdir()}
    assert not (layer / "boto3").exists() and not (layer / "botocore").exists()  # the runtime ships the SDK
    assert not (layer / "bin").exists()
    assert _size(layer) < LAYER_MAX_BYTES


def test_built_artifact_answers_every_event_through_mangum(
    sam_build: Built, python312: str, runtime_sdk: Path, moto_endpoint: str, dev_table: str, upstream: Upstream
) -> None:
    # GIVEN the built function and layer on CPython 3.12 without site-packages
    env = relay_environment(moto_endpoint, dev_table, upstream.url)
    env["PYTHONPATH"] = os.pathsep.join(map(str, (sam_build.function, sam_build.native_layer, runtime_sdk)))
    # WHEN every event goes through its Lambda handler
    paths = [str(EVENTS_DIR / f"{name}.json") for name in event_names()]
    done = subprocess.run(
        [python312, "-S", "-c", HANDLER_SCRIPT, *paths], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    # THEN the code came from the artifact, and each event gets its documented answer
    assert result["llm_relay"].startswith(str(sam_build.function))
    assert result["pydantic_core"].startswith(str(sam_build.native_layer))
    for path, response in result["answers"].items():
        check_response(Path(path).stem, response)


@pytest.fixture
def run_sh(
    sam_build: Built,
    python312: str,
    runtime_sdk: Path,
    moto_endpoint: str,
    dev_table: str,
    upstream: Upstream,
    tmp_path: Path,
) -> Iterator[str]:
    """The built run.sh serving on a free port, as the web adapter starts it; `python3` is CPython 3.12
    without site-packages. Yields the base URL once /healthz answers (the adapter's readiness check)."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text(f'#!/bin/sh\nexec "{python312}" -S "$@"\n')
    (shim / "python3").chmod(0o755)
    port = free_port()
    env = relay_environment(moto_endpoint, dev_table, upstream.url)
    env.update(
        {
            "PORT": str(port),
            "PATH": f"{shim}{os.pathsep}{env['PATH']}",
            "PYTHONPATH": os.pathsep.join(map(str, (sam_build.native_layer, runtime_sdk))),
        }
    )
    process = subprocess.Popen(
        [str(sam_build.function / "run.sh")],
        cwd=sam_build.function,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process)
        yield base
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        if process.returncode not in (0, -15):
            pytest.fail(f"run.sh exited with {process.returncode}:\n{output.decode(errors='replace')}")


def _wait_ready(base: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            pytest.fail(f"run.sh exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail("run.sh did not become ready")


def _as_lambda_response(response: httpx.Response) -> dict[str, Any]:
    """An HTTP answer in the shape of a Lambda response object, to check it like the others."""
    return {
        "statusCode": response.status_code,
        "headers": dict(response.headers),
        "body": response.text,
        "isBase64Encoded": False,
    }


def test_built_run_sh_serves_every_event_over_http(run_sh: str) -> None:
    # GIVEN the artifact served by run.sh, as under the web adapter
    with httpx.Client(base_url=run_sh, timeout=30) as client:
        for name in event_names():
            event = load_event(name)
            # WHEN the event is sent as the HTTP request the adapter would forward
            response = client.request(
                event["requestContext"]["http"]["method"],
                event["rawPath"],
                headers=event["headers"],
                content=event.get("body"),
            )
            # THEN the answer is the documented one
            check_response(name, _as_lambda_response(response))


def test_built_run_sh_streams_chunks_as_they_are_produced(run_sh: str) -> None:
    # GIVEN the streamed-chat event, asking the embedded mock for a long answer (1000 tokens, 10 ms apart)
    event = load_event("chat-streamed")
    body = {**json.loads(event["body"]), "mock": {"tokens": 1000, "chunk_delay_ms": 10, "ttft_ms": 0}}
    auth = {"authorization": event["headers"]["authorization"]}
    # WHEN it is sent to run.sh's server and its first chunk has arrived
    with (
        httpx.Client(base_url=run_sh, timeout=30) as client,
        client.stream("POST", event["rawPath"], headers=event["headers"], json=body) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: {"))
        # THEN the answer is still being generated: the chunk came as it was produced, not with the end
        answer = client.post(f"/v1/requests/{request_id}/cancel", headers=auth)
        assert answer.status_code == 202 and answer.json()["status"] == "cancelling"
        # AND the stream then ends cleanly
        assert "data: [DONE]" in list(lines)[-2:]

"""The artifact ships compiled bytecode, and nothing of it is compiled when it starts.

On Lambda `/var/task` and `/opt` are read-only: a module without a usable `.pyc` is compiled again at every cold
start. The function and the layer are compiled by CPython 3.12 (the runtime's version) in unchecked-hash mode,
so the bytecode stays valid whatever file times the zip's extraction leaves."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import Built

pytestmark = pytest.mark.slow

UNCHECKED_HASH_FLAGS = 0b01  # PEP 552: bit 0 hash-based, bit 1 check_source (off: never compared with the source)

# Runs inside the artifact's interpreter: what start-up imports (serve builds the app), then every other module.
START_SCRIPT = """
import importlib, pkgutil
import llm_relay
from llm_relay.serve import build_app
build_app()
for module in pkgutil.walk_packages(llm_relay.__path__, "llm_relay."):
    importlib.import_module(module.name)
"""


def _magic(python312: str) -> bytes:
    done = subprocess.run(
        [python312, "-S", "-c", "import importlib.util, sys; sys.stdout.write(importlib.util.MAGIC_NUMBER.hex())"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return bytes.fromhex(done.stdout)


def _missing_or_wrong_bytecode(root: Path, magic: bytes) -> list[str]:
    """Source files of `root` whose `.pyc` is absent, from another Python, or checked against the source."""
    wrong = []
    for source in root.rglob("*.py"):
        pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-312.pyc"
        header = pyc.read_bytes()[:8] if pyc.is_file() else b""
        if header[:4] != magic or int.from_bytes(header[4:8], "little") != UNCHECKED_HASH_FLAGS:
            wrong.append(str(source.relative_to(root)))
    return wrong


@pytest.mark.parametrize("part", ["function", "layer"])
def test_every_module_ships_unchecked_hash_bytecode_for_the_runtime(
    sam_build: Built, python312: str, part: str
) -> None:
    # GIVEN the built function or the layer of this machine's architecture
    root = sam_build.function if part == "function" else sam_build.native_layer
    # THEN each of its modules has a CPython 3.12 .pyc beside it, hash-based and never checked against the source
    assert _missing_or_wrong_bytecode(root, _magic(python312)) == []


def _compiled_from_source(verbose_stderr: str, roots: tuple[Path, ...]) -> list[str]:
    """Modules under `roots` that `python -v` reports compiling from source: it prints `code object from
    '<x.pyc>'` for bytecode it loads and `code object from <x.py>` (unquoted) for source it compiles."""
    marker = "# code object from "
    origins = [line.split(marker, 1)[1] for line in verbose_stderr.splitlines() if marker in line]
    return [origin for origin in origins if origin.endswith(".py") and origin.startswith(tuple(map(str, roots)))]


def _lambda_like_env(roots: tuple[Path, ...], runtime_sdk: Path) -> dict[str, str]:
    """The artifact's function and layer and the runtime's SDK on the path, bytecode writing off (Lambda's file
    system is read-only), the default settings (one openai upstream, no secret) and no relay setting of the
    caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "PYTHON"))}
    env.update(
        {
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": os.pathsep.join(map(str, (*roots, runtime_sdk))),
            "RELAY_UPSTREAM_URL": "http://127.0.0.1:9/v1",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
    )
    return env


def test_nothing_of_the_artifact_is_compiled_when_it_starts(
    sam_build: Built, python312: str, runtime_sdk: Path
) -> None:
    # GIVEN the built function and layer on CPython 3.12, bytecode writing off as on Lambda's read-only file system
    roots = (sam_build.function, sam_build.native_layer)
    env = _lambda_like_env(roots, runtime_sdk)
    before = {path: path.stat().st_mtime_ns for root in roots for path in root.rglob("*.pyc")}
    # WHEN the app is built as serve.py builds it, and every module of the package is imported
    done = subprocess.run(
        [python312, "-S", "-v", "-c", START_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # THEN every module of the function and the layer came from its shipped .pyc: none was compiled
    assert _compiled_from_source(done.stderr, roots) == []
    assert "code object from '" + str(sam_build.function) in done.stderr  # the check saw the artifact's imports
    # AND no bytecode was written or rewritten
    after = {path: path.stat().st_mtime_ns for root in roots for path in root.rglob("*.pyc")}
    assert after == before


# What start-up must not import: modules only other paths need (the CLI, the price generator, secrets when none is
# configured, the kinds of upstream the default table does not use, the compliance gate's recognizers and guardrail
# while it is off, jsonschema until a request carries a schema) and FastAPI's pydantic v1 check (a response
# model built from a route's return type imports `pydantic.v1`: ~20 ms of a cold start at full core).
NOT_AT_START = (
    "pydantic.v1",
    "genai_prices",
    "moto",
    "llm_relay.cli",
    "llm_relay.commands",
    "aws_lambda_powertools.utilities.parameters",
    "llm_relay.upstreams.bedrock",
    "llm_relay.upstreams.ndjson",
    "llm_relay.sanitize.recognizers",
    "llm_relay.sanitize.scanner",
    "llm_relay.sanitize.chunks",
    "llm_relay.sanitize.guardrail",
    "regex",
    "phonenumbers",
    "stdnum",
    "llm_relay.validation.schema",
    "jsonschema",
)


def test_start_up_imports_only_what_the_first_request_needs(
    sam_build: Built, python312: str, runtime_sdk: Path
) -> None:
    # GIVEN the built function and layer on CPython 3.12, with the default settings (one openai upstream, no secret)
    roots = (sam_build.function, sam_build.native_layer)
    env = _lambda_like_env(roots, runtime_sdk)
    # WHEN the app is built as serve.py builds it
    script = "import sys\nfrom llm_relay.serve import build_app\nbuild_app()\nprint(*sorted(sys.modules), sep='\\n')"
    done = subprocess.run([python312, "-S", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    imported = set(done.stdout.split())
    # THEN none of those was imported (and the check saw the app's own modules)
    assert "llm_relay.app" in imported and "fastapi" in imported
    assert sorted(imported.intersection(NOT_AT_START)) == []

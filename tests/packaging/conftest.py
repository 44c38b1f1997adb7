"""Packaging fixtures: the SAM CLI from `.venv-sam` (`make sam`), one `sam build` per session into a private
directory, a CPython 3.12 interpreter (the Lambda runtime's version) and a stand-in for the AWS SDK that the
Lambda runtime provides."""

from __future__ import annotations

import fcntl
import glob
import importlib.util
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_relay.dynamo import Stores, make_client
from llm_relay_dev.dev_key import ensure_dev_key
from llm_relay_dev.table import create_table
from tests.packaging.expected import DEV_KEY

REPO = Path(__file__).resolve().parents[2]
SAM_VENV = REPO / ".venv-sam"
# What the python3.12 Lambda runtime has besides the standard library (/var/runtime): the AWS SDK.
RUNTIME_SDK_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")


def sam_environment() -> dict[str, str]:
    return {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}


def assert_validates_and_lints(sam_cli: Path, template: Path) -> None:
    """`sam validate --lint` on `template`: valid and lint-clean."""
    done = subprocess.run(
        [str(sam_cli), "validate", "--lint", "--template-file", str(template)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=sam_environment(),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is a valid SAM Template" in done.stdout + done.stderr


@pytest.fixture(scope="session")
def sam_cli() -> Path:
    sam = SAM_VENV / "bin" / "sam"
    if not sam.exists():
        pytest.fail("aws-sam-cli is not installed: run `make sam` (make test does it)")
    return sam


@dataclass(frozen=True)
class Built:
    """A `sam build` output directory."""

    root: Path

    @property
    def function(self) -> Path:
        return self.root / "RelayFunction"

    def layer(self, arch: str) -> Path:
        return self.root / ("DepsLayerArm64" if arch == "arm64" else "DepsLayerX86") / "python"

    @property
    def native_layer(self) -> Path:
        """The layer built for this machine's architecture: the one this machine can import."""
        return self.layer("arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64")


@pytest.fixture(scope="session")
def sam_build(sam_cli: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`sam build` of template.yaml, uncached, into a directory of this run's own (other runs may be building at
    the same time), built once however many test processes ask (pytest-xdist: the first builds under a file lock,
    the others wait for it and read the same build). Needs PyPI (the layer's wheels) but neither Docker nor AWS."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # set in every worker of one `pytest -n` run, the same in all
    if run is None:
        return _build(sam_cli, tmp_path_factory.mktemp("sam"))
    work = tmp_path_factory.getbasetemp().parent / f"sam-{run}"  # the workers' base directories share a parent
    work.mkdir(exist_ok=True)
    with open(work / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, after the build
        failed = work / "failed"
        if failed.exists():
            pytest.fail(failed.read_text())
        if not (work / "built").exists():
            try:
                _build(sam_cli, work)
            except BaseException as exc:
                failed.write_text(str(exc))
                raise
            (work / "built").touch()
    return Built(work / "build")


def _build(sam_cli: Path, work: Path) -> Built:
    command = [
        str(sam_cli),
        "build",
        "--template-file",
        str(REPO / "template.yaml"),
        "--build-dir",
        str(work / "build"),
        "--cache-dir",
        str(work / "cache"),
        "--no-cached",
        "--parallel",
    ]
    done = subprocess.run(command, cwd=REPO, env=sam_environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"sam build failed:\n{done.stdout}\n{done.stderr}"
    return Built(work / "build")


def _python_version(candidate: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [candidate, "-S", "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


@pytest.fixture(scope="session")
def python312() -> str:
    """A CPython 3.12 interpreter, the runtime the layer's wheels are built for (`RELAY_TEST_PYTHON312` to
    choose one; else pyenv's or the one on PATH)."""
    override = os.environ.get("RELAY_TEST_PYTHON312")
    candidates = (
        [override]
        if override
        else [
            *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12"))),
            shutil.which("python3.12"),
        ]
    )
    for candidate in filter(None, candidates):
        if _python_version(candidate) == (3, 12):
            return candidate
    pytest.fail("no CPython 3.12 found (pyenv install 3.12, or set RELAY_TEST_PYTHON312)")


@pytest.fixture(scope="session")
def runtime_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only the AWS SDK (links to this environment's pure-Python copy), standing in for
    the Lambda runtime's /var/runtime: the layer deliberately does not ship boto3."""
    folder = tmp_path_factory.mktemp("runtime-sdk")
    for name in RUNTIME_SDK_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (folder / source.name).symlink_to(source)
    return folder


@pytest.fixture
def dev_table(moto_endpoint: str) -> Iterator[str]:
    """A fresh relay table (from template.yaml) in the session's moto server, holding the events' dev key."""
    import uuid

    table = f"relay-pkg-{uuid.uuid4().hex[:10]}"
    stores = Stores.create(table, make_client(moto_endpoint, "us-east-1"))
    create_table(stores.client, table)
    ensure_dev_key(stores.keys, DEV_KEY)
    yield table


def relay_environment(moto_endpoint: str, table: str, upstream_url: str) -> dict[str, str]:
    """Environment of a relay process under test: local DynamoDB, the mock upstream (the app has no other)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "AWS_PROFILE"}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "RELAY_DYNAMODB_ENDPOINT": moto_endpoint,
            "RELAY_TABLE_NAME": table,
            "RELAY_UPSTREAM_URL": upstream_url,
        }
    )
    return env

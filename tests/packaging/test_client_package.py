"""The browser client package (clients/browser) runs its own checks here, so `make test` runs them: `npm test`
(Node.js's test runner with a fake fetch, no relay) and `npm run typecheck` (tsc over the declarations and a typed
use). `npm ci` runs only when node_modules is missing or was installed from another package-lock.json."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

from tests.packaging.conftest import REPO

PACKAGE = REPO / "clients" / "browser"
# Written into node_modules after `npm ci`: the lock it was installed from.
STAMP = PACKAGE / "node_modules" / ".llm-relay-lock.sha256"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="Node.js and npm are not installed"
)


def npm(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["npm", *args], cwd=PACKAGE, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed() -> None:
    lock = hashlib.sha256((PACKAGE / "package-lock.json").read_bytes()).hexdigest()
    if STAMP.is_file() and STAMP.read_text(encoding="utf-8") == lock:
        return
    done = npm("ci", "--no-audit", "--no-fund", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    STAMP.write_text(lock, encoding="utf-8")


def test_package_tests_pass(installed: None) -> None:
    # WHEN the package's own tests run
    done = npm("test")
    # THEN they all pass
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout


def test_declarations_typecheck(installed: None) -> None:
    done = npm("run", "typecheck")
    assert done.returncode == 0, done.stdout + done.stderr


def test_package_has_no_runtime_dependencies_and_ignores_node_modules() -> None:
    manifest = json.loads((PACKAGE / "package.json").read_text(encoding="utf-8"))
    assert manifest["type"] == "module"
    assert "dependencies" not in manifest
    assert set(manifest["devDependencies"]) == {"typescript"}
    assert manifest["exports"]["."] == {"types": "./llm-relay-client.d.ts", "default": "./llm-relay-client.js"}
    assert manifest["exports"]["./renderer"] == {"types": "./renderer.d.ts", "default": "./renderer.js"}
    assert "node_modules/" in (PACKAGE / ".gitignore").read_text(encoding="utf-8").splitlines()
    lock = json.loads((PACKAGE / "package-lock.json").read_text(encoding="utf-8"))
    assert lock["packages"][""]["version"] == manifest["version"]

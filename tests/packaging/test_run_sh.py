"""`run.sh`, the handler the web adapter starts, refuses to start without `RELAY_UPSTREAM_URL`: non-zero exit,
one line on stderr naming the variable, no traceback (the built artifact's run.sh: tests/packaging/test_build.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.packaging.conftest import REPO
from tests.servers import free_port

RUN_SH = REPO / "functions" / "relay" / "run.sh"


def run_without_upstream(
    run_sh: Path, python: str, bin_dir: Path, extra_path: str = ""
) -> subprocess.CompletedProcess[str]:
    """run.sh with `python3` on PATH being `python`, `extra_path` as PYTHONPATH and no RELAY_* variable set."""
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "python3"
    shim.write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "PORT": str(free_port()), "PYTHONPATH": extra_path})
    return subprocess.run([str(run_sh)], cwd=run_sh.parent, env=env, capture_output=True, text=True, timeout=30)


def assert_refused_in_one_line(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "RELAY_UPSTREAM_URL" in lines[0] and "Traceback" not in done.stderr


def test_run_sh_refuses_to_start_without_an_upstream_url(tmp_path: Path) -> None:
    # GIVEN the function's run.sh with this environment's interpreter and no RELAY_UPSTREAM_URL
    # WHEN it starts
    done = run_without_upstream(RUN_SH, sys.executable, tmp_path / "bin")
    # THEN it exits non-zero before listening, with one line naming the variable
    assert_refused_in_one_line(done)

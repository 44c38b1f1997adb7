"""Where `make bench-lambda` writes its figures: a new file git ignores, named in its output, so a run never shows
the clone as modified; the committed reference stays as it is."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from bench import lambda_profile

REFERENCE = lambda_profile.ROOT / "bench" / "results" / "lambda.json"


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=lambda_profile.ROOT, capture_output=True, text=True, check=False)


def test_a_run_writes_a_file_of_its_own_that_git_ignores() -> None:
    # GIVEN the file a run writes by default
    out = lambda_profile.run_file(now=1_800_000_000)
    # THEN it is a new file per run, not the committed reference, and git ignores it
    assert out.name == "lambda-20270115T080000Z.json" and out != REFERENCE
    assert _git("check-ignore", "-q", str(out)).returncode == 0
    assert _git("ls-files", "--error-unmatch", str(REFERENCE)).returncode == 0  # the reference stays tracked


def test_the_run_says_where_its_figures_went(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs" / "lambda-x.json"
    lambda_profile.write_report({"trials": 5, "sizes": []}, out)
    assert out.read_text(encoding="utf-8").startswith("{") and f"figures written to {out}" in capsys.readouterr().out

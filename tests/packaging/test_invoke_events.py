"""`make invoke` with an event it cannot use: one line naming the file, before anything is started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO


def _invoke(event: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "invoke.py"), str(event)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "no event file"), ("{not json", "is not JSON"), ("[1, 2]", "is not an event")],
)
def test_an_event_that_cannot_be_used_is_one_line(tmp_path: Path, content: str | None, says: str) -> None:
    # GIVEN an event file that is missing, not JSON, or not an object
    event = tmp_path / "chat.json"
    if content is not None:
        event.write_text(content, encoding="utf-8")
    # WHEN `make invoke EVENT=<it>` runs the script
    done = _invoke(event)
    # THEN it fails with one line naming the file and saying what is wrong, and nothing on stdout
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and str(event) in done.stderr and says in done.stderr
    assert "Traceback" not in done.stderr

"""The repository stands alone: its code, tests and documentation say why things are as they are now, and never
point at the tracker's numbers or at the design document the project grew from (its decisions are in
docs/design.md). History belongs in CHANGELOG.md, the one file this test does not read."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HISTORY_FILES = {"CHANGELOG.md"}
# Written so that this file does not match them itself (the outside document's name is spelled in two pieces).
_OUTSIDE = "DE" + "SIGN"
FORBIDDEN = {
    "a tracker issue by number": re.compile(r"\bissue [0-9]", re.IGNORECASE),
    "a section of the outside design document": re.compile(rf"\b{_OUTSIDE}\s\u00a7"),
    "the outside design document": re.compile(rf"\b{_OUTSIDE}\.md\b"),
    "a directory outside the repository": re.compile(r"\.\./shared\b"),
}


def repository_files() -> list[Path]:
    """The files the repository holds: tracked ones, and new ones git does not ignore (a test run before a commit
    sees them too), as they are on disk."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    names = sorted({name for name in listed.split("\0") if name})
    return [REPO / name for name in names if name not in HISTORY_FILES and (REPO / name).is_file()]


def findings(path: Path) -> list[str]:
    """`file:line: what` for every forbidden mention in a text file; nothing for a binary one."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return []
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for what, pattern in FORBIDDEN.items():
            if pattern.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()[:120]}")
    return found


def test_the_patterns_catch_what_they_are_for() -> None:
    # (each sample is split so that this line does not match)
    word, shelf = "is" + "sue", "sha" + "red"
    lines = [f"({word} 11)", f"{word.title()} 3 says", f"{_OUTSIDE} \u00a74", f"see {_OUTSIDE}.md"]
    lines.append(f"../{shelf}/STYLE.md")
    assert [any(p.search(line) for p in FORBIDDEN.values()) for line in lines] == [True] * len(lines)
    allowed = [f"{word} #1640 of a SAM repository", f"t{word} 3", "the design of the ledger", "docs/design.md"]
    assert not any(p.search(line) for p in FORBIDDEN.values() for line in allowed)


def test_no_file_mentions_tracker_issues_or_the_outside_design_document() -> None:
    files = repository_files()
    assert any(path.name == "pyproject.toml" for path in files)  # the listing itself worked
    found = [finding for path in files for finding in findings(path)]
    assert not found, "say why the code is as it is, in the repository's own words:\n" + "\n".join(found)

"""docs/architecture.md's module map says what each module is for; this keeps it true. Every module of the two
packages is in the map, and everything the map (or the rest of the page) names exists.

The map is the tables under "## Module map". The first cell of each row holds the paths it describes, each in
backticks, relative to its package: `llm_relay` (functions/relay/llm_relay/), or `llm_relay_dev` (dev/llm_relay_dev/)
for a table whose caption names that package."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO / "docs" / "architecture.md"
PACKAGES = {"llm_relay": REPO / "functions/relay/llm_relay", "llm_relay_dev": REPO / "dev/llm_relay_dev"}
BACKTICKED = re.compile(r"`([^`]+)`")
# A repository path named anywhere on the page: it begins with one of the repository's top-level directories.
REPOSITORY_PATH = re.compile(r"^(?:functions|dev|bench|tests|layers|clients|events|scripts|docs)/[\w./-]*$")


@dataclass(frozen=True)
class Entry:
    package: str
    path: str  # relative to the package's directory
    line: int  # in docs/architecture.md

    @property
    def file(self) -> Path:
        return PACKAGES[self.package] / self.path


def map_section() -> list[tuple[int, str]]:
    """The lines of the "## Module map" section, numbered as in the file."""
    lines = ARCHITECTURE.read_text(encoding="utf-8").splitlines()
    start = lines.index("## Module map")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [(number + 1, lines[number]) for number in range(start + 1, end)]


def is_table_row(line: str) -> bool:
    return line.startswith("|")


def entries() -> list[Entry]:
    """What the map's tables list, each path with its package and line."""
    found: list[Entry] = []
    package = "llm_relay"
    header_next = False
    for number, line in map_section():
        if not line.strip():
            continue
        if not is_table_row(line):  # a table's caption
            package = "llm_relay_dev" if "`llm_relay_dev`" in line else "llm_relay"
            header_next = True
            continue
        first_cell = line.split("|")[1]
        if header_next or set(first_cell.strip()) <= set("-: "):  # the header row and the rule under it
            header_next = False
            continue
        paths = BACKTICKED.findall(first_cell)
        leftover = BACKTICKED.sub("", first_cell).replace(",", "").strip()
        assert paths and not leftover, f"docs/architecture.md:{number}: the first cell holds only `paths`: {line}"
        found += [Entry(package, path, number) for path in paths]
    return found


def modules(package: str) -> set[str]:
    """The package's modules, relative to its directory (`__init__.py` files are the packages themselves)."""
    root = PACKAGES[package]
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }


def test_the_map_is_read_as_intended() -> None:
    listed = entries()
    assert {entry.package for entry in listed} == set(PACKAGES)
    assert any(entry.path == "pipeline.py" and entry.package == "llm_relay" for entry in listed)
    assert any(entry.path == "devserver.py" and entry.package == "llm_relay_dev" for entry in listed)


def test_every_module_is_in_the_map() -> None:
    listed = {(entry.package, entry.path) for entry in entries()}
    missing = [
        f"{PACKAGES[package].relative_to(REPO) / path}"
        for package in PACKAGES
        for path in sorted(modules(package))
        if (package, path) not in listed
    ]
    assert not missing, "not in docs/architecture.md's module map (add a row saying what it does):\n" + "\n".join(
        missing
    )


def test_everything_the_map_lists_exists_once() -> None:
    listed = entries()
    stale = [
        f"docs/architecture.md:{entry.line}: `{entry.path}` ({entry.file.relative_to(REPO)} does not exist)"
        for entry in listed
        if not entry.file.is_file()
    ]
    assert not stale, "the module map lists what the code does not have:\n" + "\n".join(stale)
    first_line: dict[tuple[str, str], int] = {}
    twice = []
    for entry in listed:
        where = (entry.package, entry.path)
        if where in first_line:
            twice.append(f"docs/architecture.md:{entry.line}: `{entry.path}` (also line {first_line[where]})")
        first_line.setdefault(where, entry.line)
    assert not twice, "listed twice in the module map:\n" + "\n".join(twice)


def test_every_repository_path_the_page_names_exists() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    stale = [
        f"docs/architecture.md:{number}: `{path}`"
        for number, line in enumerate(text.splitlines(), start=1)
        for path in BACKTICKED.findall(line)
        if REPOSITORY_PATH.match(path) and not (REPO / path).exists()
    ]
    assert not stale, "docs/architecture.md names paths that do not exist:\n" + "\n".join(stale)

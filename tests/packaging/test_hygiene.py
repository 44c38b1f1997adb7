"""Packaging hygiene: the license the metadata names is in the repository, as an SPDX expression with a build
backend that understands it, and the documentation links only to files in the repository."""

from __future__ import annotations

import re
import tomllib

from tests.packaging.conftest import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_apache_license_file_and_spdx_metadata():
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"]
    (requirement,) = project["build-system"]["requires"]
    name, _, version = requirement.partition("==")
    assert name == "setuptools" and tuple(int(part) for part in version.split(".")[:2]) >= (77, 0)


def test_documentation_links_stay_in_the_repository():
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if target.startswith("#"):
                continue
            assert "://" not in target, f"{doc.name} links outside the repository: {target}"
            assert (doc.parent / target.split("#")[0]).exists(), f"{doc.name}: {target} does not exist"

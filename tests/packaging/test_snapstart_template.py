"""template.yaml: SnapStart is one parameter, off by default; on, the published versions (the `live` alias) are
snapshotted and the web adapter (its 1.0.0 release, layer 27) calls the relay's after-restore hook.
`sam validate --lint` passes either way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llm_relay.snapstart import AFTER_RESTORE_PATH
from llm_relay_dev.table import load_template
from tests.packaging.conftest import REPO, assert_validates_and_lints

ADAPTER_SNAPSTART_RELEASE = 27  # aws-lambda-web-adapter 1.0.0: the first release that handles a restore


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO / "template.yaml")


def test_snapstart_is_a_parameter_applied_to_published_versions(template: dict[str, Any]) -> None:
    # GIVEN the template's SnapStart parameter and the function
    parameter = template["Parameters"]["SnapStart"]
    function = template["Resources"]["RelayFunction"]["Properties"]
    # THEN it is off unless asked for, and on it applies to the published versions (what `live` points at)
    assert parameter["Default"] == "false" and parameter["AllowedValues"] == ["true", "false"]
    assert template["Conditions"]["UseSnapStart"] == {"Fn::Equals": [{"Ref": "SnapStart"}, "true"]}
    assert function["SnapStart"] == {"ApplyOn": {"Fn::If": ["UseSnapStart", "PublishedVersions", "None"]}}
    assert function["AutoPublishAlias"] == "live"
    # AND the adapter is told the relay's after-restore hook only when SnapStart is on
    hook = function["Environment"]["Variables"]["AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH"]
    assert hook == {"Fn::If": ["UseSnapStart", AFTER_RESTORE_PATH, {"Ref": "AWS::NoValue"}]}


def test_the_web_adapter_default_handles_a_restore(template: dict[str, Any]) -> None:
    assert template["Parameters"]["WebAdapterLayerVersion"]["Default"] >= ADAPTER_SNAPSTART_RELEASE


@pytest.mark.slow
@pytest.mark.parametrize("snapstart", ["true", "false"])
def test_sam_validate_lint_passes_with_snapstart_on_and_off(sam_cli: Path, tmp_path: Path, snapstart: str) -> None:
    # GIVEN the template with SnapStart's default set either way (next to the code it points at)
    source = (REPO / "template.yaml").read_text(encoding="utf-8")
    marker = "  SnapStart:\n    Type: String\n"
    assert source.count(marker) == 1
    head, tail = source.split(marker)
    tail = tail.replace('    Default: "false"\n', f'    Default: "{snapstart}"\n', 1)
    variant = tmp_path / "template.yaml"
    variant.write_text(head + marker + tail, encoding="utf-8")
    # WHEN sam validates and lints it THEN it is valid and lint-clean
    assert_validates_and_lints(sam_cli, variant)

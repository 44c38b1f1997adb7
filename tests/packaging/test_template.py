"""template.yaml: the properties that matter, read from the template itself, from SAM's own transform of it,
and from `sam validate --lint` (cfn-lint)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

import pytest

from llm_relay.settings import Settings
from llm_relay_dev.table import load_template
from tests.packaging.conftest import REPO, SAM_VENV, assert_validates_and_lints, sam_environment

ADAPTER_ACCOUNT = "753240598075"
TABLE_ARN = {"Fn::GetAtt": ["RelayTable", "Arn"]}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO / "template.yaml")


def _function(template: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = template["Resources"]["RelayFunction"]["Properties"]
    return props


def _variables(template: dict[str, Any]) -> dict[str, Any]:
    variables: dict[str, Any] = _function(template)["Environment"]["Variables"]
    return variables


def _statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    """Every IAM statement the function's policies can grant (both branches of conditional policies)."""
    statements: list[dict[str, Any]] = []
    for policy in _function(template)["Policies"]:
        if "Fn::If" in policy:
            _, granted, otherwise = policy["Fn::If"]
            assert otherwise == {"Ref": "AWS::NoValue"}
            policy = granted
        statements += policy["Statement"]
    return statements


def _actions(statement: dict[str, Any]) -> set[str]:
    actions = statement["Action"]
    return {actions} if isinstance(actions, str) else set(actions)


def test_function_url_streams_through_the_web_adapter(template):
    # GIVEN the relay function
    function = _function(template)
    variables = _variables(template)
    # THEN the function URL streams, and the web adapter runs run.sh's uvicorn and waits for /healthz
    assert function["FunctionUrlConfig"]["InvokeMode"] == "RESPONSE_STREAM"
    assert function["Handler"] == "run.sh"
    assert variables["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert variables["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert variables["AWS_LWA_READINESS_CHECK_PATH"] == "/healthz"
    assert variables["PORT"] == "8000"  # sam local's emulator holds 8080
    assert variables["RELAY_FLUSH_NUDGE"] == "true"
    # AND the adapter layer is AWS's public one, for the function's architecture, at a parameterized version
    adapter = function["Layers"][0]["Fn::If"]
    assert adapter[0] == "IsArm64"
    arm, x86 = (branch["Fn::Sub"] for branch in adapter[1:])
    assert arm.endswith(f":{ADAPTER_ACCOUNT}:layer:LambdaAdapterLayerArm64:${{WebAdapterLayerVersion}}")
    assert x86.endswith(f":{ADAPTER_ACCOUNT}:layer:LambdaAdapterLayerX86:${{WebAdapterLayerVersion}}")
    assert template["Parameters"]["Architecture"]["Default"] == "arm64"


def test_runtime_and_dependency_layer_match_the_architecture(template):
    # GIVEN the function and its two candidate dependency layers
    function = _function(template)
    resources = template["Resources"]
    # THEN the function runs Python 3.12 on the chosen architecture, with the layer built for that architecture
    assert function["Runtime"] == "python3.12"
    assert function["Architectures"] == [{"Ref": "Architecture"}]
    assert function["Layers"][1] == {"Fn::If": ["IsArm64", {"Ref": "DepsLayerArm64"}, {"Ref": "DepsLayerX86"}]}
    for name, arch in (("DepsLayerArm64", "arm64"), ("DepsLayerX86", "x86_64")):
        layer = resources[name]
        assert layer["Metadata"]["BuildMethod"] == "makefile"
        assert layer["Properties"]["CompatibleArchitectures"] == [arch]
        assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert resources["RelayFunction"]["Metadata"]["BuildMethod"] == "makefile"


def test_one_timeout_parameter_feeds_the_function_and_the_relay(template):
    # GIVEN the timeout parameter
    parameter = template["Parameters"]["FunctionTimeout"]
    # THEN it is the function's timeout and the relay's deadline, sized for long streams (Lambda's maximum)
    assert _function(template)["Timeout"] == {"Ref": "FunctionTimeout"}
    assert _variables(template)["RELAY_FUNCTION_TIMEOUT_S"] == {"Ref": "FunctionTimeout"}
    assert parameter["Default"] == 900 and parameter["MaxValue"] == 900


def test_every_relay_variable_is_a_settings_field(template):
    # GIVEN the settings' environment names
    names = {(field.alias or f"RELAY_{name}").upper() for name, field in Settings.model_fields.items()}
    # THEN every RELAY_* variable the template sets is read by Settings (a typo would be silently ignored)
    relay_variables = {name for name in _variables(template) if name.startswith("RELAY_")}
    assert relay_variables - names == set()
    assert {"RELAY_TABLE_NAME", "RELAY_UPSTREAM_URL", "RELAY_ALLOWED_MODELS"} <= relay_variables


def test_ambiguous_upstream_attempts_are_not_retried_unless_the_stack_says_so(template, monkeypatch):
    # GIVEN the template's parameter for retrying a 408, a 504 or a close without an answer
    parameter = template["Parameters"]["RetryAmbiguous"]
    # THEN the function reads it, and it defaults to what the settings default to: off (a model may have generated)
    assert _variables(template)["RELAY_RETRY_AMBIGUOUS"] == {"Ref": "RetryAmbiguous"}
    assert (parameter["Default"], parameter["AllowedValues"]) == ("false", ["true", "false"])
    assert Settings.model_fields["retry_ambiguous"].default is False
    monkeypatch.setenv("RELAY_RETRY_AMBIGUOUS", "true")
    assert Settings().retry_ambiguous is True


def test_powertools_service_log_level_and_namespace_are_configured(template):
    variables = _variables(template)
    assert variables["POWERTOOLS_SERVICE_NAME"] == "llm-relay"
    assert variables["POWERTOOLS_LOG_LEVEL"] == {"Ref": "LogLevel"}
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert template["Parameters"]["MetricsNamespace"]["Default"] == "LLMRelay"


def test_only_the_configured_upstream_secret_is_readable(template):
    # GIVEN the statements outside DynamoDB
    others = {s["Sid"]: s for s in _statements(template) if not any(a.startswith("dynamodb:") for a in _actions(s))}
    # THEN each reads exactly one named secret, parameter or key, and exists only when that one is configured
    assert others["UpstreamSecret"]["Action"] == "secretsmanager:GetSecretValue"
    assert others["UpstreamSecret"]["Resource"] == {"Ref": "UpstreamSecretArn"}
    assert others["UpstreamParameter"]["Action"] == "ssm:GetParameter"
    assert others["UpstreamParameter"]["Resource"]["Fn::Sub"].endswith(":parameter${UpstreamSsmParameter}")
    assert others["UpstreamKeyDecrypt"]["Action"] == "kms:Decrypt"
    assert others["UpstreamKeyDecrypt"]["Resource"] == {"Ref": "UpstreamKmsKeyArn"}
    assert "kms:ViaService" in others["UpstreamKeyDecrypt"]["Condition"]["StringEquals"]
    assert set(others) == {
        "UpstreamSecret",
        "UpstreamParameter",
        "UpstreamKeyDecrypt",
        "BedrockStream",
        "GuardrailApply",
    }
    conditions = [p["Fn::If"][0] for p in _function(template)["Policies"] if "Fn::If" in p]
    assert conditions == [
        "HasUpstreamSecret",
        "HasUpstreamSsmParameter",
        "HasUpstreamKmsKey",
        "HasBedrockModels",
        "HasGuardrail",
    ]


def test_bedrock_streaming_is_granted_on_the_listed_models_only(template):
    # GIVEN the Bedrock statement THEN it streams, nothing else, from the BedrockModelArns parameter only, and
    # exists only when that list is not empty (no Bedrock access by default)
    [bedrock] = [s for s in _statements(template) if s["Sid"] == "BedrockStream"]
    assert bedrock["Action"] == "bedrock:InvokeModelWithResponseStream"
    assert bedrock["Resource"] == {"Ref": "BedrockModelArns"}
    parameter = template["Parameters"]["BedrockModelArns"]
    assert parameter["Type"] == "CommaDelimitedList" and parameter["Default"] == ""
    condition = template["Conditions"]["HasBedrockModels"]
    assert condition == {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "BedrockModelArns"}]}, ""]}]}


def test_the_guardrail_is_applied_only_when_configured_and_only_that_one(template):
    # GIVEN the function's policies THEN ApplyGuardrail is granted in exactly one statement, only under HasGuardrail,
    # and names exactly the configured guardrail (no Bedrock Guardrails access by default)
    guarded = [
        p["Fn::If"]
        for p in _function(template)["Policies"]
        if "Fn::If" in p and any("bedrock:ApplyGuardrail" in _actions(s) for s in p["Fn::If"][1]["Statement"])
    ]
    assert [condition for condition, _, _ in guarded] == ["HasGuardrail"]
    [(_, granted, otherwise)] = guarded
    assert otherwise == {"Ref": "AWS::NoValue"}
    assert granted["Statement"] == [
        {
            "Sid": "GuardrailApply",
            "Effect": "Allow",
            "Action": "bedrock:ApplyGuardrail",
            "Resource": {
                "Fn::Sub": "arn:${AWS::Partition}:bedrock:${AWS::Region}:${AWS::AccountId}:guardrail/${GuardrailId}"
            },
        }
    ]
    unconditional = [s for p in _function(template)["Policies"] if "Fn::If" not in p for s in p["Statement"]]
    assert not [s for s in unconditional if any(a.startswith("bedrock:") for a in _actions(s))]
    assert template["Parameters"]["GuardrailId"]["Default"] == ""
    assert template["Conditions"]["HasGuardrail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "GuardrailId"}, ""]}]}
    # AND the relay reads the guardrail's settings, its id only when one is given
    variables = _variables(template)
    assert variables["RELAY_GUARDRAIL_ID"] == {
        "Fn::If": ["HasGuardrail", {"Ref": "GuardrailId"}, {"Ref": "AWS::NoValue"}]
    }
    assert variables["RELAY_GUARDRAIL_VERSION"] == {"Ref": "GuardrailVersion"}
    assert variables["RELAY_GUARDRAIL_MODE"] == {"Ref": "GuardrailMode"}
    assert variables["RELAY_GUARDRAIL_ON_ERROR"] == {"Ref": "GuardrailOnError"}
    assert template["Parameters"]["GuardrailMode"]["AllowedValues"] == ["sync", "async"]
    assert template["Parameters"]["GuardrailOnError"]["AllowedValues"] == ["fail_closed", "fail_open"]


def test_the_upstream_table_replaces_the_url_when_given(template):
    # GIVEN the Upstreams parameter THEN set, it is RELAY_UPSTREAMS and RELAY_UPSTREAM_URL is left out (the relay
    # refuses both at once); empty, the URL shorthand is used
    variables = _variables(template)
    assert variables["RELAY_UPSTREAMS"] == {
        "Fn::If": ["HasUpstreamTable", {"Ref": "Upstreams"}, {"Ref": "AWS::NoValue"}]
    }
    assert variables["RELAY_UPSTREAM_URL"] == {
        "Fn::If": ["HasUpstreamTable", {"Ref": "AWS::NoValue"}, {"Ref": "UpstreamUrl"}]
    }
    assert template["Parameters"]["Upstreams"]["Default"] == ""


def test_table_keeps_its_schema_with_ttl_recovery_and_encryption(template):
    # GIVEN the relay table
    table = template["Resources"]["RelayTable"]
    props = table["Properties"]
    # THEN usage and request items expire by TTL, and the data survives mistakes and stack deletion
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert table["DeletionPolicy"] == "Retain"
    assert [k["AttributeName"] for k in props["KeySchema"]] == ["pk", "sk"]
    assert props["GlobalSecondaryIndexes"][0]["IndexName"] == "gsi1"


def test_browsers_may_call_the_url_and_read_the_relay_headers(template):
    cors = _function(template)["FunctionUrlConfig"]["Cors"]
    assert {"authorization", "content-type", "x-api-key"} <= set(cors["AllowHeaders"])
    assert set(cors["AllowMethods"]) == {"GET", "POST"}
    exposed = set(cors["ExposeHeaders"])
    assert {"x-request-id", "retry-after", "server-timing"} <= exposed
    assert {
        f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset") for kind in ("requests", "tokens")
    } <= exposed


def test_no_browser_origin_is_allowed_unless_the_deployer_names_one(template):
    # GIVEN the origins parameter: empty by default
    assert template["Parameters"]["CorsAllowOrigins"]["Default"] == ""
    # THEN with it empty the function URL allows no origin; otherwise exactly the ones given
    cors = _function(template)["FunctionUrlConfig"]["Cors"]
    assert cors["AllowOrigins"] == {"Fn::If": ["HasCorsOrigins", {"Ref": "CorsAllowOrigins"}, {"Ref": "AWS::NoValue"}]}
    condition = template["Conditions"]["HasCorsOrigins"]
    assert condition == {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "CorsAllowOrigins"}]}, ""]}]}


def test_run_sh_is_an_executable_lf_shell_script():
    run_sh = REPO / "functions" / "relay" / "run.sh"
    content = run_sh.read_bytes()
    assert content.startswith(b"#!/bin/sh\n")
    assert b"\r" not in content
    assert run_sh.stat().st_mode & 0o111 == 0o111


TRANSFORM_SCRIPT = """
import json, sys
from samcli.yamlhelper import yaml_parse
from samtranslator.translator.transform import transform

class Policies:
    def load(self):
        return {"AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}

template = yaml_parse(open(sys.argv[1]).read())
for resource in template["Resources"].values():  # local paths are replaced by S3 URIs when packaging
    props = resource.get("Properties", {})
    for uri in ("CodeUri", "ContentUri"):
        if uri in props:
            props[uri] = "s3://bucket/key"
template["Resources"]["RelayFunction"]["Properties"].update(json.loads(sys.argv[2]))
print(json.dumps(transform(template, {}, Policies())))
"""


def _transformed(**function_properties: str) -> dict[str, Any]:
    """template.yaml as CloudFormation sees it after the SAM transform (run with the SAM CLI's translator),
    with some of the function's properties replaced."""
    python = SAM_VENV / "bin" / "python"
    if not python.exists():
        pytest.fail("aws-sam-cli is not installed: run `make sam` (make test does it)")
    done = subprocess.run(
        [str(python), "-c", TRANSFORM_SCRIPT, str(REPO / "template.yaml"), json.dumps(function_properties)],
        capture_output=True,
        text=True,
        env=sam_environment(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    transformed: dict[str, Any] = json.loads(done.stdout)
    return transformed


def _published_version(resources: dict[str, Any]) -> str:
    (version,) = (name for name, r in resources.items() if r["Type"] == "AWS::Lambda::Version")
    return version


def test_function_url_serves_the_live_alias_publicly():
    # GIVEN the deployed form of the template
    resources = _transformed()["Resources"]
    # THEN the function URL (streaming) targets the `live` alias, so a rollback is repointing the alias
    url = resources["RelayFunctionUrl"]["Properties"]
    assert url["TargetFunctionArn"] == {"Ref": "RelayFunctionAliaslive"}
    assert url["InvokeMode"] == "RESPONSE_STREAM"
    assert resources["RelayFunctionAliaslive"]["Properties"]["Name"] == "live"
    # AND anyone may call the URL (keys are checked by the relay): both permissions new function URLs need
    permissions = {
        r["Properties"]["Action"]: r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"
    }
    assert permissions["lambda:InvokeFunctionUrl"]["FunctionUrlAuthType"] == "NONE"
    assert permissions["lambda:InvokeFunction"]["InvokedViaFunctionUrl"] is True


def test_sam_validate_lint_is_clean(sam_cli):
    assert_validates_and_lints(sam_cli, REPO / "template.yaml")


def _dependency_hash() -> str:
    digest = hashlib.sha256()
    for name in ("Makefile", "requirements.txt"):
        digest.update((REPO / "layers" / "deps" / name).read_bytes())
    return digest.hexdigest()[:16]


def test_the_function_names_the_dependency_layer_it_was_published_with(template):
    # GIVEN the layer's build inputs
    expected = _dependency_hash()
    # THEN their hash is in the function's description, so a dependency change alone publishes a new version
    description = _function(template)["Description"]
    assert description.endswith(f"dependency layer {expected}"), (
        f"layers/deps changed: set the function's Description in template.yaml to end with {expected}"
    )


def test_a_code_or_dependency_change_publishes_a_new_version_for_the_alias():
    # GIVEN the template as deployed
    current = _published_version(_transformed()["Resources"])
    # WHEN the code moves, or the function's description (the dependency hash) changes
    new_code = _published_version(_transformed(CodeUri="s3://bucket/other-key")["Resources"])
    new_deps = _published_version(_transformed(Description="llm-relay; dependency layer 0000")["Resources"])
    # THEN SAM publishes a new version each time, which `live` then points at
    assert len({current, new_code, new_deps}) == 3

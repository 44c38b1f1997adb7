"""The relay's DynamoDB table built from `template.yaml` itself, so the schema that `make dev`, `make dynamodb`,
`make invoke` and the tests use cannot drift from the deployed one. Needs PyYAML (dev only)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TABLE_RESOURCE = "RelayTable"


def find_template(start: Path | None = None) -> Path:
    """The repository's template.yaml, searched upwards from `start` (default: this file)."""
    here = (start or Path(__file__)).resolve()
    for folder in [here, *here.parents]:
        candidate = folder / "template.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("template.yaml not found above " + str(here))


def load_template(path: Path | None = None) -> dict[str, Any]:
    """Parse template.yaml, keeping CloudFormation short-form tags (`!Ref X` becomes `{"Ref": "X"}`)."""
    import yaml

    class CfnLoader(yaml.SafeLoader):
        pass

    def construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if suffix == "GetAtt":
                value = str(value).split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return {name: value}

    CfnLoader.add_multi_constructor("!", construct)
    with open(path or find_template(), encoding="utf-8") as handle:
        loaded: dict[str, Any] = yaml.load(handle, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass
    return loaded


def create_table(client: DynamoDBClient, table_name: str, template: dict[str, Any] | None = None) -> None:
    """Create the relay table exactly as template.yaml declares it (idempotent)."""
    props = (template or load_template())["Resources"][TABLE_RESOURCE]["Properties"]
    try:  # not list_tables: it answers one page (100 tables), and a shared local DynamoDB may hold more
        client.describe_table(TableName=table_name)
        return
    except client.exceptions.ResourceNotFoundException:
        pass
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props["BillingMode"],
    }
    if props.get("GlobalSecondaryIndexes"):
        kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    # ResourceInUse: created by a first attempt whose answer came too late for the client's read timeout
    with contextlib.suppress(client.exceptions.ResourceInUseException):
        client.create_table(**kwargs)
    ttl = props.get("TimeToLiveSpecification")
    if ttl:
        client.update_time_to_live(TableName=table_name, TimeToLiveSpecification=ttl)

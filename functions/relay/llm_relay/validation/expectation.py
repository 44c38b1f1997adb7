"""What a request asks the relay to check in its answer (pure): the structured output of `response_format` (chat's
own, or the Responses API's `text.format` translated into it) and, when it offers tools, the arguments of the calls
the model makes. A `json_schema` schema is checked here, before admission: a schema no validator can apply is a 400
naming it, never an answer judged against nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InvalidRequest

if TYPE_CHECKING:
    from ..chat_request import ChatRequest

SCHEMA_PARAM = "response_format.json_schema.schema"

ContentFormat = Literal["json_object", "json_schema"]


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the answer is checked for. `content`: the structured output asked for (None: the text is free);
    `schema`: the `json_schema` one's schema, if it gave one; `tools`: the request offers tools, so a turn that ends
    in calls has each call's arguments checked; `choices`: how many choices the request asked for (`n`)."""

    content: ContentFormat | None = None
    schema: dict[str, Any] | None = None
    tools: bool = False
    choices: int = 1


def expectation_of(chat: ChatRequest) -> Expectation | None:
    """What to check in the answer to `chat`; None when it asks for nothing to be checked (then nothing is
    assembled: the stream costs what it did)."""
    extra = chat.model_extra or {}
    content, schema = _content_format(extra.get("response_format"))
    tools = bool(extra.get("tools") or extra.get("functions"))
    if content is None and not tools:
        return None
    return Expectation(content, schema, tools, chat.n)


def check_response_format(value: Any) -> None:
    """Refuse (400) a `json_schema` response format whose schema the relay could not validate an answer against:
    not an object, too large, of an unknown draft, invalid against its metaschema, or referring outside itself.
    Other response formats are the upstream's to judge. jsonschema is imported only when there is a schema."""
    if not isinstance(value, dict) or value.get("type") != "json_schema":
        return
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        param = "response_format.json_schema"
        raise InvalidRequest(f"Invalid value for '{param}': expected an object.", param=param)
    schema = spec.get("schema")
    if schema is None:
        return
    if not isinstance(schema, dict):
        raise InvalidRequest(
            f"Invalid value for '{SCHEMA_PARAM}': expected a JSON schema (an object).", param=SCHEMA_PARAM
        )
    from .schema import schema_problem

    problem = schema_problem(schema)
    if problem is not None:
        raise InvalidRequest(f"Invalid value for '{SCHEMA_PARAM}': {problem}", param=SCHEMA_PARAM)


def _content_format(value: Any) -> tuple[ContentFormat | None, dict[str, Any] | None]:
    if not isinstance(value, dict):
        return None, None
    kind = value.get("type")
    if kind == "json_object":
        return "json_object", None
    if kind != "json_schema":
        return None, None
    spec = value.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return "json_schema", schema if isinstance(schema, dict) else None

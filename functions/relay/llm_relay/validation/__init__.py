"""The assembled answer, validated: what a request asks to be checked (`expectation_of`, with its schema refused
before admission when it cannot be applied: `check_response_format`), the answer kept as it is relayed and judged
when it finishes (`AnswerCheck`), and the `Verdict`. jsonschema is imported only for a request with a schema."""

from __future__ import annotations

from .assemble import VALIDATION_TIMEOUT_S, AnswerCheck, answer_check
from .expectation import SCHEMA_PARAM, Expectation, check_response_format, expectation_of
from .verdict import INVALID_OUTPUT, Verdict

__all__ = [
    "INVALID_OUTPUT",
    "SCHEMA_PARAM",
    "VALIDATION_TIMEOUT_S",
    "AnswerCheck",
    "Expectation",
    "Verdict",
    "answer_check",
    "check_response_format",
    "expectation_of",
]

"""`make dev`'s console (`human_log.install`) beside the relay's Powertools logger, which every app built in the
process creates again: once per execution environment behind the function-URL front."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from aws_lambda_powertools import Logger

from llm_relay_dev import human_log


@pytest.fixture
def service() -> Iterator[str]:
    """A service name of this test's own; the process's logging as it was, afterwards."""
    names = ["", *human_log._UVICORN]
    saved = {
        name: (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
        for name in names
        for logger in [logging.getLogger(name)]
    }
    yield f"relay-test-{uuid.uuid4().hex[:8]}"
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


def _printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("apps_before", [0, 1])
def test_apps_built_before_and_after_the_console_log_to_it(
    service: str, capsys: pytest.CaptureFixture[str], apps_before: int
) -> None:
    # GIVEN the relay's logger built by an app before the console is installed, or not
    for _ in range(apps_before):
        Logger(service=service)
    human_log.install(service)
    # WHEN two more apps are built (two execution environments behind the function-URL front)
    first, second = Logger(service=service), Logger(service=service)
    first.warning("upstream slow")
    second.info("request finished", extra={"request_id": "req_1"})
    second.info(human_log.REJECTED, extra={"request_id": "req_2", "status": 401, "code": "invalid_api_key"})
    # THEN they were built, and the console shows the warning and the refusal as one line each, never JSON
    assert _printed(capsys) == [
        f"[warning] {service}: upstream slow",
        "[relay] req_2 rejected: 401 invalid_api_key",
    ]

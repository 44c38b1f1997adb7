"""`make dev`'s log for a person: one `[relay]` line per finished request, warnings and errors as one line each
(an exception as its type and message, never a traceback), and nothing else: no EMF documents, no JSON log
lines (`RELAY_DEV_LOG=json` keeps those, as Lambda would print them). Every line has its control characters
escaped, so a value from a request (a model name with a newline) cannot forge a line."""

from __future__ import annotations

import logging
import sys

MODES = ("human", "json")
REJECTED = "request rejected"  # llm_relay.telemetry's message for a refused request
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")
_SILENT = logging.CRITICAL + 1  # a handler at this level passes nothing on


def escape(text: str) -> str:
    """`text` with every non-printable character written as its escape (`\\n`, `\\x1b`, `\\u2028`)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class HumanFormatter(logging.Formatter):
    """`[warning] llm_relay.limits.admit: message (ValueError: detail)` on one line (`[relay]` starts only the lines
    of finished requests)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.getMessage() == REJECTED:  # the relay's log line of a refused request, as its [relay] line
            fields = record.__dict__
            line = f"{fields.get('request_id')} rejected: {fields.get('status')} {fields.get('code')}"
            return "[relay] " + escape(line)
        text = f"{record.name}: {record.getMessage().strip()}"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text += f" ({type(error).__name__}: {error})"
        return f"[{record.levelname.lower()}] " + escape(text)


def install(service_logger: str) -> None:
    """Route every logger (the relay's Powertools logger named `service_logger`, library loggers, uvicorn's) to
    one stdout handler at WARNING with the human format.

    The relay's logger keeps the JSON handler Powertools gave it, silenced: every `create_app` builds a Powertools
    `Logger` for the service again (one per execution environment behind the function-URL front), and Powertools
    takes a logger it configured to still hold that handler: without it, the next `Logger` fails to build
    (`IndexError`). Configuring it here first makes the order irrelevant: an app built after this adds no JSON
    handler of its own."""
    from aws_lambda_powertools import Logger

    Logger(service=service_logger)  # configured once per process; a no-op if an app was built already
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in _UVICORN:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)
    # Finished requests have the dev server's own line; refused ones get theirs from the relay's INFO record.
    relay = logging.getLogger(service_logger)
    for own in relay.handlers:
        own.setLevel(_SILENT)
    relay.propagate = True
    relay.setLevel(logging.INFO)
    relay.addFilter(_warnings_and_refusals)
    handler.setLevel(logging.INFO)
    logging.getLogger("uvicorn.access").disabled = True


def _warnings_and_refusals(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.getMessage() == REJECTED

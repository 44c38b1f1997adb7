"""`llm-relay`: manage API keys and read usage, against AWS or a local DynamoDB (`make dev`, `make dynamodb`).

    llm-relay [--region R] [--profile P] [--table T] [--endpoint-url URL] COMMAND ...
    llm-relay keys create --name NAME [--models a,b] [--expires-at WHEN] [--rpm N] [--tpm N] ...
    llm-relay keys create ... [--sanitize MODE] [--sanitize-prompt MODE] [--sanitize-entities EMAIL,IBAN,...]
    llm-relay keys list | show KEY_ID | revoke KEY_ID | rotate KEY_ID [--grace MIN] | set-limits KEY_ID [--rpm N] ...
    llm-relay keys update KEY_ID [--rpm N] ... [--expires-at WHEN] [--sanitize MODE] ...   (`default` clears one)
    llm-relay usage [--key KEY_ID] [--since WHEN] [--until WHEN] [--by key|model|day] [--format table|json|csv]
    llm-relay prices [MODEL]     the per-million prices the relay charges, and their source (no DynamoDB)
    llm-relay reconcile          settle requests whose relay stopped (expired leases) as `lost`
    llm-relay migrate [--dry-run]   bring a table written by relay 0.1 to this version's layout
    llm-relay coldstarts [--since WHEN] [--log-group G]   cold starts and SnapStart restores, from CloudWatch Logs

The global options default to the environment (`AWS_REGION`, `AWS_PROFILE`, `RELAY_TABLE_NAME`,
`RELAY_DYNAMODB_ENDPOINT`), like the AWS CLI's. Input is checked before anything is written. Every failure is
one line on stderr, never a traceback: exit code 2 for bad input (unknown key ids included), 1 when DynamoDB or
AWS refuses or cannot be reached. A closed pipe (`| head`) ends the output quietly.

Subcommands live in `llm_relay.commands`, one module each, registered in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from pydantic import ValidationError

from . import __version__
from .commands import coldstarts, keys, migrate, prices, reconcile, usage
from .commands.common import CliError, Register, aws_configuration, aws_session
from .dynamo import Stores, make_client
from .errors import StoreUnavailable
from .settings import Settings

#: Every subcommand group, in `--help` order: one line each.
COMMANDS: tuple[Register, ...] = (
    keys.register,
    usage.register,
    prices.register,
    reconcile.register,
    migrate.register,
    coldstarts.register,
)

GLOBAL_OPTIONS = {  # option: (settings field or None, environment variable, what it is)
    "--region": ("aws_region", "AWS_REGION", "AWS region of the table"),
    "--profile": (None, "AWS_PROFILE", "AWS profile for credentials and region"),
    "--table": ("table_name", "RELAY_TABLE_NAME", "DynamoDB table name (default llm-relay)"),
    "--endpoint-url": ("dynamodb_endpoint", "RELAY_DYNAMODB_ENDPOINT", "DynamoDB endpoint, e.g. a local one"),
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say, and nothing to say it to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line for the operator, not a traceback
        return _fail(f"unexpected {type(exc).__name__}: {exc}", 1)


def _main(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    run_local = getattr(args, "run_local", None)  # a command that reads no DynamoDB (`prices`)
    try:
        if run_local is not None:
            local: int = run_local(args, _settings(args))
            return local
        settings, stores = _connect(args)
    except CliError as exc:
        return _fail(str(exc), 2)
    try:
        result: int = args.run(args, settings, stores)
        return result
    except CliError as exc:
        return _fail(str(exc), 2)
    except StoreUnavailable as exc:
        return _fail(f"{exc} (table {settings.table_name!r}{_where(settings)})", 1)
    finally:
        sys.stdout.flush()  # a closed pipe shows here, inside main's handler


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block above them), pointing at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    root: argparse.ArgumentParser = _Parser(
        prog="llm-relay",
        description="Manage llm-relay API keys and read usage.",
        epilog="Global options may also follow the command. Environment: "
        + ", ".join(env for _, env, _ in GLOBAL_OPTIONS.values()),
    )
    root.add_argument("--version", action="version", version=f"llm-relay {__version__}")
    _global_options(root, argparse.SUPPRESS)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(commands)
    for command in _leaves(root):
        _global_options(command, argparse.SUPPRESS)
    return root


def _global_options(parser: argparse.ArgumentParser, default: str) -> None:
    group = parser.add_argument_group("AWS and table (default: the environment)")
    for option, (_, env, text) in GLOBAL_OPTIONS.items():
        group.add_argument(option, default=default, metavar=option[2:].split("-")[0].upper(), help=f"{text} (${env})")


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser that runs a command, so the global options are accepted after the command too."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for sub in getattr(action, "choices", {}).values():
            found += _leaves(sub) or [sub]
    return found


def _connect(args: argparse.Namespace) -> tuple[Settings, Stores]:
    """Settings from the environment with the global options on top, and the stores on one client."""
    settings = _settings(args)
    session = aws_session(args, settings.dynamodb_endpoint)
    with aws_configuration():
        client = make_client(settings.dynamodb_endpoint, settings.aws_region, session=session)
    return settings, Stores.create(settings.table_name, client)


def _settings(args: argparse.Namespace) -> Settings:
    """The settings from the environment, with the global options on top."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid configuration in the environment: {problems}") from None
    given = {field: getattr(args, _dest(opt), None) for opt, (field, _, _) in GLOBAL_OPTIONS.items() if field}
    return settings.model_copy(update={k: v for k, v in given.items() if v is not None})


def _dest(option: str) -> str:
    return option[2:].replace("-", "_")


def _where(settings: Settings) -> str:
    return f" at {settings.dynamodb_endpoint}" if settings.dynamodb_endpoint else ""


def _fail(message: str, code: int) -> int:
    print(f"llm-relay: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

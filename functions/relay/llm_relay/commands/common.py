"""What every subcommand shares: the run signature and the error a subcommand raises for bad input."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..dynamo import Stores
    from ..settings import Settings

#: A subcommand's body: the parsed arguments, the settings (global options applied), the stores.
Run = Callable[[argparse.Namespace, "Settings", "Stores"], int]

#: `register(commands)` adds a subcommand (and its subcommands) to `llm-relay`'s subparsers.
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


class CliError(Exception):
    """Bad input found after parsing (an unknown key id, nothing to set): one line on stderr, exit code 2."""

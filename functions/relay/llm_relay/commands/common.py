"""What every subcommand shares: the run signature, the error a subcommand raises for bad input, and the AWS
session of the global options (a profile, a region, a local endpoint) with its configuration errors in one line."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, NoRegionError, ProfileNotFound

if TYPE_CHECKING:
    from ..dynamo import Stores
    from ..settings import Settings

#: A subcommand's body: the parsed arguments, the settings (global options applied), the stores.
Run = Callable[[argparse.Namespace, "Settings", "Stores"], int]

#: `register(commands)` adds a subcommand (and its subcommands) to `llm-relay`'s subparsers.
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


class CliError(Exception):
    """Bad input found after parsing (an unknown key id, nothing to set): one line on stderr, exit code 2."""


def aws_session(args: argparse.Namespace, endpoint: str | None) -> Any:
    """A boto3 session for the global options' profile; at a local `endpoint` (moto), which accepts any credentials,
    with placeholder ones where the environment has none. Build its clients inside `aws_configuration()`."""
    if endpoint:
        for name, value in (("AWS_ACCESS_KEY_ID", "dev"), ("AWS_SECRET_ACCESS_KEY", "dev")):
            os.environ.setdefault(name, value)
    import boto3

    with aws_configuration():
        return boto3.session.Session(profile_name=getattr(args, "profile", None))


@contextmanager
def aws_configuration() -> Iterator[None]:
    """An AWS configuration botocore cannot use (no such profile, no region, a bad value) as one `CliError` line."""
    try:
        yield
    except ProfileNotFound as exc:
        raise CliError(str(exc)) from None
    except NoRegionError:
        raise CliError("no AWS region: give --region, set AWS_REGION, or configure one for the profile") from None
    except (BotoCoreError, ValueError) as exc:
        raise CliError(f"cannot use this AWS configuration: {exc}") from None

"""Argument types of the CLI: each turns text into a value or raises `argparse.ArgumentTypeError` with a
one-line reason, which argparse prints with the usage line and exit code 2, before anything is written."""

from __future__ import annotations

import argparse
import calendar
import re
import time
from collections.abc import Callable
from decimal import Decimal

from ..keys import ISO
from ..limits.rules import LIMIT_NAMES, parse_limit
from ..sanitize.policy import ENTITY_TYPES, MODES, Mode, parse_entities

MAX_LIMIT = Decimal(10) ** 15  # far above any real limit, far inside what DynamoDB stores exactly
MAX_PLACES = 12  # USD to a millionth of a micro-dollar
EARLIEST = calendar.timegm((2000, 1, 1, 0, 0, 0))
LATEST = calendar.timegm((9999, 12, 31, 23, 59, 59))
EXPIRY_HELP = "when the key stops working: ISO date/time in UTC (2026-12-31, 2026-12-31T18:00Z) or +30d, +12h"

_AGE = re.compile(r"^(\d{1,9}(?:\.\d{1,6})?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M", "%Y-%m-%d")
_KEY_ID = re.compile(r"^rk_[0-9A-Za-z_-]{1,64}$")


SHARDS_HELP = (
    "split the key's rate and concurrency limits over N items (1 to 64; 'default': 1), for a key that takes more "
    "than about 50 new requests a second; see docs/limits.md, 'Shards'"
)


def limit_options(parser: argparse.ArgumentParser) -> None:
    for name in LIMIT_NAMES:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar="N" if LIMIT_NAMES[name] else "USD",
            type=limit(name),
            default=argparse.SUPPRESS,
            help=SHARDS_HELP
            if name == "shards"
            else f"{name}: a number, 'unlimited', or 'default' (use the configured default)",
        )


#: The sanitizer options of `keys create|update`: option, its `dest`, what it sets.
SANITIZE_OPTIONS = {
    "--sanitize": ("sanitize_output", "the output sanitizer"),
    "--sanitize-prompt": ("sanitize_prompt", "the prompt sanitizer"),
    "--sanitize-entities": ("sanitize_entities", "the entity types the sanitizer looks for"),
}


def sanitize_options(parser: argparse.ArgumentParser) -> None:
    """The key's own sanitizer policy; the deployment's (RELAY_SANITIZE...) stays a floor it cannot loosen."""
    for option, (dest, text) in SANITIZE_OPTIONS.items():
        entities = dest == "sanitize_entities"
        parser.add_argument(
            option,
            dest=dest,
            metavar="TYPES" if entities else "MODE",
            type=sanitize_entities if entities else sanitize_mode,
            default=argparse.SUPPRESS,
            help=f"{text}: "
            + ("comma-separated (EMAIL,CREDIT_CARD,...), 'all'" if entities else f"{', '.join(MODES)}")
            + ", or 'default' (the deployment's)",
        )


def sanitize_mode(text: str) -> Mode | None:
    """A sanitizer mode, or None for `default` (the key follows the deployment's)."""
    value = text.strip().lower()
    if value == "default":
        return None
    for mode in MODES:
        if value == mode:
            return mode
    raise argparse.ArgumentTypeError(f"the sanitizer mode must be {', '.join(MODES)} or default, not {text!r}")


def sanitize_entities(text: str) -> frozenset[str] | None:
    """Entity type names (`EMAIL,CREDIT_CARD`, `all`), or None for `default` (the deployment's)."""
    value = text.strip()
    if value.lower() == "default":
        return None
    if not value.strip(", "):
        raise argparse.ArgumentTypeError(f"give entity types ({', '.join(ENTITY_TYPES)}), all, or default")
    try:
        return parse_entities(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def limit(name: str) -> Callable[[str], Decimal | None]:
    def parse(text: str) -> Decimal | None:
        try:
            value = parse_limit(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value is not None and value > MAX_LIMIT:
            raise argparse.ArgumentTypeError(f"{name} must be at most {MAX_LIMIT:f} (got {text})")
        if value is not None and value.as_tuple().exponent < -MAX_PLACES:  # type: ignore[operator]
            raise argparse.ArgumentTypeError(f"{name} may have at most {MAX_PLACES} decimal places (got {text})")
        return value

    return parse


def name(text: str) -> str:
    value = text.strip()
    if not value:
        raise argparse.ArgumentTypeError("the name must not be empty")
    if len(value) > 128 or not value.isprintable():
        raise argparse.ArgumentTypeError("the name must be at most 128 printable characters")
    return value


def models(text: str) -> frozenset[str] | None:
    names = frozenset(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise argparse.ArgumentTypeError("--models needs at least one model name (omit it to allow all)")
    if not all(m.isprintable() and len(m) <= 256 for m in names):
        raise argparse.ArgumentTypeError("model names must be printable, at most 256 characters")
    return None if "*" in names else names


def key_id(text: str) -> str:
    value = text.strip()
    if not _KEY_ID.match(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a key id (rk_…; see `llm-relay keys list`)")
    return value


def minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"minutes must be a number, not {text!r}") from None
    if not 0 <= value <= 60 * 24 * 30:
        raise argparse.ArgumentTypeError(f"minutes must be between 0 and 43200 (30 days), not {text}")
    return value


def when(text: str) -> float:
    """An instant (epoch seconds) from an ISO date/time in UTC, `now`, or an age like `90m` (that long ago)."""
    value = text.strip()
    if value == "now":
        return time.time()
    age = _AGE.match(value)
    epoch = time.time() - float(age.group(1)) * _UNITS[age.group(2)] if age else _iso(value)
    if epoch is None or not EARLIEST <= epoch <= LATEST:
        raise argparse.ArgumentTypeError(
            f"cannot read time {text!r}: use 2025-01-31, 2025-01-31T12:00Z, now, or an age like 6h (after 2000)"
        )
    return epoch


def expiry(text: str) -> str | None:
    """An expiry as stored (ISO UTC second): a date/time, `+30d` from now, or `never` (None)."""
    epoch = _expiry_epoch(text)
    return None if epoch is None else time.strftime(ISO, time.gmtime(epoch))


def future_expiry(text: str) -> str | None:
    """An expiry for a new key: as `expiry`, and not already past. A key created expired could never be used,
    while its secret, shown only once, would look valid; the mistake would surface later as 401s."""
    epoch = _expiry_epoch(text)
    if epoch is None:
        return None
    if epoch <= time.time():
        stored = time.strftime(ISO, time.gmtime(epoch))
        raise argparse.ArgumentTypeError(
            f"expiry {stored} is already past: a key created with it could never be used (give a later date or +30d)"
        )
    return time.strftime(ISO, time.gmtime(epoch))


def _expiry_epoch(text: str) -> float | None:
    """The instant an expiry names (None for `never`), or the one-line refusal of what it cannot read."""
    value = text.strip()
    if value == "never":
        return None
    age = _AGE.match(value[1:]) if value.startswith("+") else None
    epoch = time.time() + float(age.group(1)) * _UNITS[age.group(2)] if age else _iso(value)
    if epoch is None or not EARLIEST <= epoch <= LATEST:
        raise argparse.ArgumentTypeError(f"cannot read expiry {text!r}: use 2026-12-31, 2026-12-31T18:00Z or +30d")
    return epoch


def _iso(value: str) -> float | None:
    for fmt in _FORMATS:
        try:
            return float(calendar.timegm(time.strptime(value, fmt)))
        except ValueError:
            continue
    return None

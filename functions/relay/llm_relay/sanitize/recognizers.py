"""The built-in recognizers (pure): what each entity type looks like, how a candidate is confirmed, and the longest
match it can produce.

A recognizer is a pattern that proposes candidates and a validator that confirms them with a well-kept library where
one exists: `phonenumbers` (its matcher) for phone numbers, `python-stdnum` for checksums (Luhn for cards, mod-97 for
IBANs), `ipaddress` for IP addresses. Every pattern is bounded (no unbounded repetition), so a match is at most
`max_len` characters: that bound is what the stream sanitizer may hold back (`scanner.py`), and a unit test checks
it against each pattern's own maximum width.

Patterns use the `regex` module: its partial matching tells the scanner where a value could still begin at the end
of the text seen so far. Names, places and other NLP entities need a language model far too large for a Lambda
function, so they are left to an optional Bedrock guardrail (`guardrail.py`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
import regex
from stdnum import iban, luhn

from .policy import ENTITY_TYPES

Validator = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Recognizer:
    entity: str
    pattern: str  # `regex` syntax; bounded, so a match is at most `max_len` characters
    max_len: int
    validate: Validator | None = None  # None: the pattern alone is enough
    # A cheap test (stdlib `re`) that a text must pass for the pattern to match in it or to begin a match at its
    # end; it lets the scanner skip the pattern for most pieces of a stream. It must never be narrower than the
    # pattern: a test of its own checks every recognizer's gate against its positives and their prefixes.
    gate: str = ""

    def compiled(self) -> regex.Pattern[str]:
        return _compile(self.pattern)

    def compiled_gate(self) -> re.Pattern[str] | None:
        return re.compile(self.gate) if self.gate else None


def starts_with(*literals: str) -> str:
    """A gate for patterns that begin with one of `literals`: a text passes if it holds one whole, or ends with the
    beginning of one (the rest may come in the next piece)."""
    parts = [re.escape(literal) for literal in literals]
    parts += [re.escape(literal[:k]) + "$" for literal in literals for k in range(1, len(literal))]
    return "|".join(dict.fromkeys(parts))


_COMPILED: dict[str, regex.Pattern[str]] = {}


def _compile(pattern: str) -> regex.Pattern[str]:
    found = _COMPILED.get(pattern)
    if found is None:
        found = _COMPILED[pattern] = regex.compile(pattern, regex.VERSION0)
    return found


# --- validators -------------------------------------------------------------------------------------------------
_CARD_PREFIXES = regex.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[068]|35|6011|64[4-9]|65|62)")


def _card(text: str) -> bool:
    """13 to 19 digits, a known issuer prefix, and the Luhn checksum (python-stdnum)."""
    digits = "".join(c for c in text if c.isdigit())
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIXES.match(digits)) and luhn.is_valid(digits)


def _iban(text: str) -> bool:
    """The country's length and format and the mod-97 check (python-stdnum)."""
    return bool(iban.is_valid(text))


def _ip(text: str) -> bool:
    """A valid IPv4 or IPv6 address (`ipaddress`). An IPv6 candidate needs three non-empty groups, so that `::1`,
    `a::b` and Python's slices (`[::2]`) are not taken for addresses."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return address.version == 4 or sum(1 for group in text.split(":") if group) >= 3


class _PhoneValidator:
    """A phone number that `phonenumbers`' matcher finds, whole and valid, in the candidate (numbers written without
    a country code are read as numbers of `region`). Bare digit groups (no `+`, no trunk `0`, no area code in
    parentheses) must also be grouped the way the number is written (`STRICT_GROUPING`): read alone, the digits of a
    date and time (`2024-01-15 10`) or of an order number (`2024-000123`) are often a valid number."""

    def __init__(self, region: str) -> None:
        self.region = region

    def __call__(self, text: str) -> bool:
        digits = sum(c.isdigit() for c in text)
        if not 7 <= digits <= 17:
            return False
        leniency = phonenumbers.Leniency.VALID if text[0] in "+(0" else phonenumbers.Leniency.STRICT_GROUPING
        for match in phonenumbers.PhoneNumberMatcher(text, self.region, leniency=leniency):
            return match.start == 0 and match.end >= len(text.rstrip())
        return False


def _jwt(text: str) -> bool:
    """The first segment decodes to a JSON header with an algorithm (`alg`)."""
    head = text.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict) and "alg" in header


# --- patterns ---------------------------------------------------------------------------------------------------
_PEM_LABEL = r"(?: [A-Z0-9]{1,20}){0,3} PRIVATE KEY-----"
_PEM_NEWLINE = r"(?:\r?\n|\\n|\\r\\n)"  # a real line break, or an escaped one inside a JSON string
_PRIVATE_KEY = (
    rf"-----BEGIN{_PEM_LABEL}"
    rf"(?:(?:{_PEM_NEWLINE}(?:Proc-Type|DEK-Info): [A-Za-z0-9,-]{{1,64}}){{1,2}}{_PEM_NEWLINE})?"  # legacy encryption
    rf"(?:{_PEM_NEWLINE}[A-Za-z0-9+/=]{{1,80}}){{0,120}}"
    rf"(?:{_PEM_NEWLINE}-----END{_PEM_LABEL})?"
)
_JWT = r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,1000}\.eyJ[A-Za-z0-9_-]{5,2000}\.[A-Za-z0-9_-]{10,1000}(?![\w-])"
_AWS_ACCESS_KEY = r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"
_API_KEY = (
    r"(?<![\w-])(?:sk-(?:ant-(?:api|admin)\d{2}-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}"
    r"|AIza[0-9A-Za-z_-]{35})(?![\w-])"
)
_GITHUB_TOKEN = r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?![\w])"  # noqa: S105
_SLACK_TOKEN = r"(?<![\w-])xox[abposr]-[A-Za-z0-9-]{10,250}(?![\w-])"  # noqa: S105
_EMAIL = (
    r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?![\w-])"
)
_CREDIT_CARD = r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w]|-\d)"
_IBAN = r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
_US_SSN = r"(?<![\w-])(?!000|666|9\d\d)\d{3}(?P<ssn_sep>[- ])(?!00)\d{2}(?P=ssn_sep)(?!0000)\d{4}(?![\w]|-\d)"
_IPV4 = r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)"
_IPV6 = r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
_PHONE = (
    r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,6}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{1,4}){1,5}"
    r"(?: ?(?:x|ext\.?) ?\d{1,6})?(?![\w]|[.-]\d)"
)


def builtin(phone_region: str = "US") -> dict[str, Recognizer]:
    """Every built-in recognizer by entity type, in `ENTITY_TYPES` order (that order breaks ties)."""
    found = {
        "PRIVATE_KEY": Recognizer("PRIVATE_KEY", _PRIVATE_KEY, 10_424, gate=starts_with("-----BEGIN")),
        "JWT": Recognizer("JWT", _JWT, 4_008, _jwt, gate=starts_with("eyJ")),
        "AWS_ACCESS_KEY": Recognizer("AWS_ACCESS_KEY", _AWS_ACCESS_KEY, 20, gate="A"),
        "API_KEY": Recognizer("API_KEY", _API_KEY, 215, gate=starts_with("sk-", "AIza")),
        "GITHUB_TOKEN": Recognizer("GITHUB_TOKEN", _GITHUB_TOKEN, 266, gate=starts_with("gh", "github_pat_")),
        "SLACK_TOKEN": Recognizer("SLACK_TOKEN", _SLACK_TOKEN, 255, gate=starts_with("xox")),
        "EMAIL": Recognizer("EMAIL", _EMAIL, 601, gate=r"@|[A-Za-z0-9._%+-]$"),
        "CREDIT_CARD": Recognizer("CREDIT_CARD", _CREDIT_CARD, 37, _card, gate=r"\d"),
        "IBAN": Recognizer("IBAN", _IBAN, 43, _iban, gate=r"\d|[A-Z]$"),
        "US_SSN": Recognizer("US_SSN", _US_SSN, 11, gate=r"\d"),
        "IP_ADDRESS": Recognizer("IP_ADDRESS", f"{_IPV4}|{_IPV6}", 50, _ip, gate=r"[\d:]|[0-9A-Fa-f]$"),
        "PHONE_NUMBER": Recognizer("PHONE_NUMBER", _PHONE, 55, _PhoneValidator(phone_region), gate=r"[\d+(]"),
    }
    assert tuple(found) == ENTITY_TYPES
    return found

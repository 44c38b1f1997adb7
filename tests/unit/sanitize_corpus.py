"""The sanitizer's test corpus: values each recognizer must find, and texts none may touch.

Positives are generated, not hand-picked, so that they look like what a model writes: Faker (seeded, so the corpus
is the same on every run) in several locales for e-mail addresses, cards, IBANs, SSNs and IP addresses;
`phonenumbers`' own example numbers for many regions, and Faker's phone numbers only where `phonenumbers` confirms
them valid; secrets built in their issuers' documented formats from seeded random bytes (JWTs from real JSON
headers, PEM blocks with DER-shaped bodies). Every positive is also embedded in sentences (`sentences`), at the
start, in the middle, at the end and before punctuation.

Negatives are texts a model writes all the time that look a little like a value (code, versions, dates, times,
UUIDs, hashes, prices, order numbers) and must pass untouched. A text that a recognizer cannot tell from a real
value goes to `KNOWN_LIMITS` with the reason, instead of the negatives.
"""

from __future__ import annotations

import base64
import functools
import json
import random
import string
from dataclasses import dataclass

import phonenumbers
from faker import Faker
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from stdnum import iban

SEED = 20240115
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "nl_NL", "es_ES", "it_IT", "pl_PL", "pt_PT", "de_AT", "de_CH")
IBAN_LOCALES = (*LOCALES[1:], "nl_BE", "fi_FI", "no_NO", "da_DK", "en_IE", "cs_CZ", "el_GR", "ru_RU", "pt_BR")
PHONE_REGIONS = (
    "US", "CA", "GB", "DE", "FR", "NL", "ES", "IT", "PL", "PT", "BE", "CH", "AT", "SE", "NO", "DK", "FI", "IE",
    "BR", "MX", "AR", "IN", "JP", "KR", "CN", "AU", "NZ", "SG", "ZA", "IL", "TR", "AE",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Positive:
    """A value a recognizer must find whole, where it comes from (shown in test ids), and the phone region the
    sanitizer reads national numbers in."""

    entity: str
    value: str
    origin: str
    region: str = "US"


@dataclass(frozen=True, slots=True)
class KnownLimit:
    """A text a model may well write that the recognizers take for a value they cannot tell it from."""

    text: str
    redacted: str  # what the built-in recognizers (phone region US, placeholder `[{entity}]`) make of it
    reason: str


# Where a value stands in a sentence: first, inside, last, and before each punctuation mark that ends one.
TEMPLATES = (
    "{} is the one I meant.",
    "Please use {} for this.",
    "The value is {}",
    "It ends with {}.",
    "First {}, then the rest.",
    "(see {})",
    "one {}; two",
)


def sentences(value: str) -> list[str]:
    return [template.format(value) for template in TEMPLATES]


# Only the providers the corpus uses: a Faker with all of them costs a tenth of a second per locale to build.
_PROVIDERS = [
    f"faker.providers.{name}"
    for name in ("person", "company", "internet", "bank", "phone_number", "credit_card", "ssn", "address")
]


@functools.cache
def _locale(locale: str) -> Faker:
    return Faker(locale, providers=_PROVIDERS)


def _faker(locale: str, salt: int = 0) -> Faker:
    """The locale's generator, seeded afresh: what it makes next depends on the seed alone."""
    fake = _locale(locale)
    fake.seed_instance(SEED + salt)
    return fake


def _grouped(value: str, sep: str = " ", size: int = 4) -> str:
    return sep.join(value[i : i + size] for i in range(0, len(value), size))


# --- PII ----------------------------------------------------------------------------------------------------------
def _emails() -> list[Positive]:
    found: dict[str, Positive] = {}
    for salt, locale in enumerate(LOCALES):
        fake = _faker(locale, salt)
        for make in (fake.email, fake.free_email, fake.company_email, fake.ascii_safe_email):
            for _ in range(2):
                value = make()
                if value.isascii():
                    found.setdefault(value, Positive("EMAIL", value, f"faker {locale} {make.__name__}"))
    return list(found.values())


def _cards() -> list[Positive]:
    fake = _faker("en_US")
    found = []
    for kind in ("visa", "visa13", "visa19", "mastercard", "amex", "discover"):
        for _ in range(3):
            number = fake.credit_card_number(kind)
            found.append(Positive("CREDIT_CARD", number, f"faker {kind}"))
            found.append(Positive("CREDIT_CARD", _grouped(number), f"faker {kind} spaced"))
            found.append(Positive("CREDIT_CARD", _grouped(number, "-"), f"faker {kind} dashed"))
            if kind == "amex":  # as printed on the card: 4-6-5
                found.append(Positive("CREDIT_CARD", f"{number[:4]} {number[4:10]} {number[10:]}", "faker amex 4-6-5"))
    return found


# The IBAN registry's examples of countries no Faker locale covers whose IBANs end in letters (MT, MU, SC).
_REGISTRY_IBANS = (
    "MT84MALT011000012345MTLCAST001S",
    "MU17BOMM0101101030300200000MUR",
    "SC18SSCB11010000000000001497USD",
)


def _ibans() -> list[Positive]:
    found = []
    values = [(_faker(locale, salt).iban(), f"faker {locale}") for salt, locale in enumerate(IBAN_LOCALES)]
    values += [(value, "IBAN registry") for value in _REGISTRY_IBANS]
    for value, origin in values:
        assert iban.is_valid(value), (origin, value)
        found.append(Positive("IBAN", value, origin))
        found.append(Positive("IBAN", _grouped(value), f"{origin} grouped"))
    return found


def _ssns() -> list[Positive]:
    fake = _faker("en_US")
    found = [Positive("US_SSN", fake.ssn(), "faker en_US") for _ in range(10)]
    return found + [Positive("US_SSN", fake.ssn().replace("-", " "), "faker en_US spaced") for _ in range(4)]


def _ips() -> list[Positive]:
    fake = _faker("en_US")
    found = [Positive("IP_ADDRESS", fake.ipv4(), "faker ipv4") for _ in range(8)]
    found += [Positive("IP_ADDRESS", fake.ipv4_private(), "faker ipv4 private") for _ in range(3)]
    found += [Positive("IP_ADDRESS", fake.ipv6(), "faker ipv6") for _ in range(8)]
    # Compressed forms (a run of zero groups written `::`), as people write them.
    found += [
        Positive("IP_ADDRESS", value, "ipv6 compressed")
        for value in ("2001:db8::8a2e:370:7334", "2001:db8:85a3::8a2e:370:7334", "fe80::1ff:fe23:4567:890a")
    ]
    return found


def _phones() -> list[Positive]:
    found: dict[str, Positive] = {}

    def add(value: str, origin: str, region: str = "US") -> None:
        found.setdefault(value, Positive("PHONE_NUMBER", value, origin, region))

    for region in PHONE_REGIONS:
        for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            add(phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL), f"example {region} intl")
            add(phonenumbers.format_number(number, PhoneNumberFormat.E164), f"example {region} e164")
            if region == "US":
                add(phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL), "example US national")
    for salt, (locale, region) in enumerate((("en_US", "US"), ("en_GB", "GB"), ("de_DE", "DE"), ("fr_FR", "FR"))):
        fake = _faker(locale, salt)
        for _ in range(30):
            value = fake.phone_number()
            if _valid_phone(value, region):
                add(value, f"faker {locale} valid", region)
    return list(found.values())


def _valid_phone(text: str, region: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(text, region))
    except phonenumbers.NumberParseException:
        return False


# --- secrets ------------------------------------------------------------------------------------------------------
_rng = random.Random(SEED)
_ALNUM = string.ascii_letters + string.digits
_UPPER_ALNUM = string.ascii_uppercase + string.digits


def _chars(alphabet: str, count: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(count))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _secrets() -> list[Positive]:
    urlsafe = _ALNUM + "_-"
    found = [Positive("AWS_ACCESS_KEY", "AKIAIOSFODNN7EXAMPLE", "AWS documentation")]
    found += [Positive("AWS_ACCESS_KEY", "AKIA" + _chars(_UPPER_ALNUM, 16), "AKIA") for _ in range(3)]
    found += [Positive("AWS_ACCESS_KEY", "ASIA" + _chars(_UPPER_ALNUM, 16), "ASIA (session)")]
    found += [
        Positive("API_KEY", "sk-" + _chars(_ALNUM, 48), "openai legacy"),
        Positive("API_KEY", "sk-proj-" + _chars(urlsafe, 156), "openai project"),
        Positive("API_KEY", "sk-svcacct-" + _chars(urlsafe, 74), "openai service account"),
        Positive("API_KEY", "sk-ant-api03-" + _chars(urlsafe, 93) + "AA", "anthropic"),
        Positive("API_KEY", "AIza" + _chars(urlsafe, 35), "google"),
    ]
    found += [Positive("GITHUB_TOKEN", prefix + _chars(_ALNUM, 36), prefix) for prefix in ("ghp_", "gho_", "ghs_")]
    found += [Positive("GITHUB_TOKEN", "github_pat_" + _chars(_ALNUM, 22) + "_" + _chars(_ALNUM, 59), "github_pat")]
    for kind in ("xoxb", "xoxp"):
        token = f"{kind}-{_chars(string.digits, 12)}-{_chars(string.digits, 13)}-{_chars(_ALNUM, 24)}"
        found.append(Positive("SLACK_TOKEN", token, kind))
    found += [Positive("JWT", _jwt(header), f"jwt {header['alg']}") for header in _JWT_HEADERS]
    found += _private_keys()
    return found


_JWT_HEADERS = (
    {"alg": "HS256", "typ": "JWT"},
    {"alg": "RS256", "typ": "JWT", "kid": "2024-01-key"},
    {"typ": "JWT", "alg": "ES256"},
)


def _jwt(header: dict[str, str]) -> str:
    fake = _faker("en_US", len(header))
    payload = {
        "sub": str(fake.random_int(10**9, 10**10)),
        "name": fake.name(),
        "email": fake.email(),
        "iat": 1705314600,
    }
    signature = _rng.randbytes(256 if header["alg"] == "RS256" else 32)
    parts = (json.dumps(header, separators=(",", ":")).encode(), json.dumps(payload).encode(), signature)
    return ".".join(_b64url(part) for part in parts)


# DER openings of real keys (RSA 2048 in PKCS#1 and PKCS#8, P-256 in SEC 1, Ed25519 in PKCS#8), then random bytes.
_PEM_KINDS = (
    ("RSA PRIVATE KEY", bytes.fromhex("308204a40201000282010100"), 1180, 64),
    ("PRIVATE KEY", bytes.fromhex("308204bd020100300d06092a864886f70d0101010500048204a7"), 1195, 64),
    ("EC PRIVATE KEY", bytes.fromhex("30770201010420"), 114, 64),
    ("PRIVATE KEY", bytes.fromhex("302e020100300506032b657004220420"), 32, 64),
    ("OPENSSH PRIVATE KEY", b"openssh-key-v1\x00", 384, 70),
    ("ENCRYPTED PRIVATE KEY", bytes.fromhex("308205163040"), 1300, 64),
)


def _pem(label: str, der: bytes, width: int, newline: str = "\n") -> str:
    body = base64.b64encode(der).decode()
    lines = [f"-----BEGIN {label}-----", *(body[i : i + width] for i in range(0, len(body), width))]
    return newline.join([*lines, f"-----END {label}-----"])


def _private_keys() -> list[Positive]:
    found = []
    for label, opening, size, width in _PEM_KINDS:
        pem = _pem(label, opening + _rng.randbytes(size), width)
        found.append(Positive("PRIVATE_KEY", pem, f"pem {label}"))
    rsa = _pem("RSA PRIVATE KEY", _PEM_KINDS[0][1] + _rng.randbytes(1180), 64, "\r\n")
    found.append(Positive("PRIVATE_KEY", rsa, "pem RSA PRIVATE KEY crlf"))
    pkcs8 = _pem("PRIVATE KEY", _PEM_KINDS[1][1] + _rng.randbytes(1195), 64)
    found.append(Positive("PRIVATE_KEY", json.dumps(pkcs8)[1:-1], "pem PRIVATE KEY json-escaped"))
    # OpenSSL's legacy encrypted form: header lines between the opening line and the body
    legacy = _pem("RSA PRIVATE KEY", _PEM_KINDS[0][1] + _rng.randbytes(600), 64).split("\n", 1)
    headers = "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC," + _rng.randbytes(16).hex().upper() + "\n"
    found.append(
        Positive("PRIVATE_KEY", f"{legacy[0]}\n{headers}\n{legacy[1]}", "pem RSA PRIVATE KEY legacy encrypted")
    )
    return found


POSITIVES: tuple[Positive, ...] = (
    *_emails(),
    *_cards(),
    *_ibans(),
    *_ssns(),
    *_ips(),
    *_phones(),
    *_secrets(),
)


# --- negatives ----------------------------------------------------------------------------------------------------
NEGATIVES: tuple[str, ...] = (
    # code
    "def every_other(a: list[int], b: int = 2) -> list[int]:\n    return a[::2] + [b]",
    'print(f"{total:,.2f}")  # 1234567.891 -> 1,234,567.89',
    '{"id": 1234567, "price": 12.5, "tags": ["a", "b"], "ok": true, "ratio": 0.75}',
    '{"version": "2.31.0", "count": 42, "offset": -17, "ids": [101, 202, 303]}',
    'for i in $(seq 1 10); do echo "${a[@]:1:2}" | cut -d: -f2; done',
    "python -c 'print(list(range(100))[::2])' && ls -la /var/log | head -n 20",
    "std::vector<int> v{1, 2, 3}; std::map<std::string, int> m; std::size_t n = v.size();",
    "if (x >= 10 && y <= 20) { return arr[i * 4 + 3]; }",
    "SELECT id, total FROM orders WHERE created_at > '2024-01-15' LIMIT 100 OFFSET 200;",
    "docker run -p 8080:80 -e WORKERS=4 nginx:1.25.3",
    "regex = r'^\\d{3}-\\d{2}-\\d{4}$'  # the shape of a US SSN",
    "phone: 'NNN-NNN-NNNN', x = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
    "Hex 0xDEADBEEF and 0x7fffffff, color #ff8800, MAC 00:1A:2B:3C:4D:5E, ratio 4:3.",
    "IPv6 loopback ::1, link-local fe80::1 and the prefix 2001:db8:: are too short to be told from code.",
    "npm i lodash@4.17.21 react@18.2.0; uses: actions/checkout@v4",
    "sk-learn is a library, ghp is an abbreviation, xoxo means hugs and AKIA is only a prefix.",
    "eyJhbGciOiJIUzI1NiJ9 alone is half a token",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUXYZ\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    # versions
    "Upgrade from 1.2.3 to v10.4.1-beta, or pin 2.31.0-rc1 (not 2.31.0.dev0).",
    "Python 3.11.7, Node v20.10.0, Go 1.21.5 and Rust 1.75.0 are supported.",
    "requests>=2.31.0,<3 and numpy==1.26.4 and pandas~=2.1.4",
    "Build 1.0.0+20130313144700 and 1.0.0-alpha+001; Kubernetes 1.29.0, kubectl v1.29.1+k3s2.",
    # dates, timestamps, times
    "The release was on 2024-01-15, or 15/01/2024, or 01/15/2024, or 15.01.2024.",
    "It happened on Jan 15, 2024 and again on 15 January 2024.",
    "Logged at 2024-01-15T10:30:00Z, then 2024-01-15T10:30:00.123456+02:00.",
    "Logged at 2024-01-15 10:30:00 and 2023-12-31 23:59:59 UTC.",
    "The meeting is at 10:30:00, lunch at 12:30 and the call at 9:05 pm.",
    "Unix time 1705314600 (milliseconds 1705314600123, nanoseconds 1705314600123456789).",
    "Compact 20240115103000, basic 20240115T103000Z, offset 2024-01-15T10:30:00+0100.",
    "On 2024.01.15, 15-01-2024, 2024/01/15 and 01-15-2024 10:30; ISO week 2024-W03-1, ordinal 2024-015.",
    "Deadline 2024-01-15 17:00 CET; from 2024-01-15 09:00 to 2024-01-16 18:00. Termin 15.01.2024 10:30 Uhr.",
    # identifiers
    "Request 123e4567-e89b-12d3-a456-426614174000 failed; retry f47ac10b-58cc-4372-a567-0e02b2c3d479.",
    "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709 and md5 d41d8cd98f00b204e9800998ecf8427e",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "git commit 1e8387e, tag v2.0.0, merge 9fceb02d0ae598e95dc970b74767f19372d61af8",
    # money, percentages, quantities
    "It costs $1,234.56, or €99.99, or 1.000,50 EUR, or £12,000,000.",
    "Prices rose 12% (from 3.5% to 15.75%) and 99.9 % of orders shipped.",
    "The population grew from 8,000,000 to 8,336,817 between 2010 and 2020.",
    "Pi is 3.14159265358979 and e is 2.718281828459045.",
    "A 1920x1080 screen, 3840 x 2160 video, 16:9 at 59.94 fps.",
    "Temperatures were -12.5, -3 and +4.5 degrees; 1+2+3 = 6.",
    # order numbers, years, prose
    "Order #123456789 shipped; invoice INV-2024-0042, ticket JIRA-1234, PO 4500012345.",
    "Order 2024-000123 and reference 2023-456789 are both open.",
    "Between 1999 and 2024 the company grew from 12 to 12,000 people.",
    "Call me at 10 or 11 tomorrow; room 1204 on floor 12, building 3.",
    "Line 42, column 17: error E1101. Exit code 127 after 3 retries.",
    "ISBN 978-3-16-148410-0 is the second edition.",
    "Tracking numbers 1Z999AA10123456784 and 9400 1000 0000 0000 0000 00 are on their way.",
    "Between 2020-2024 and 1999-2003, items 100-200, ports 8000-8080 and 49152-65535, code 123-456-789.",
    "1,000,000 requests at 99.99% uptime over 365 days, 24/7.",
    "The sum of 1234 5678 and 9012 is 15924.",
)


KNOWN_LIMITS: tuple[KnownLimit, ...] = (
    KnownLimit(
        "Section 4.5.6.7 of the spec, and version 1.2.3.4 of the tool.",
        "Section [IP_ADDRESS] of the spec, and version [IP_ADDRESS] of the tool.",
        "four numbers of at most 255 joined by dots are a valid IPv4 address, whatever they number",
    ),
    KnownLimit(
        "git clone git@github.com:owner/repo.git && cd repo",
        "git clone [EMAIL]:owner/repo.git && cd repo",
        "an SSH remote's user@host has an e-mail address's shape; refusing one followed by `:path` would also let "
        "`address:password` lines of a credential dump through",
    ),
)

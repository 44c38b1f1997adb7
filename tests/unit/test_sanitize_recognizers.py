"""The built-in recognizers against the corpus: every positive is found whole as its entity type and nothing around it
changes; every negative passes untouched; each recognizer's `max_len` is its pattern's maximum width; and no gate is
narrower than its pattern, so that skipping a pattern when its gate fails never changes what is found."""

from __future__ import annotations

import re
import re._parser as sre_parse  # type: ignore[import-not-found]  # the stdlib's own parser (no stub): a pattern's width
import warnings
from collections.abc import Iterator

import pytest
import regex

from llm_relay.sanitize.chunks import detector_for
from llm_relay.sanitize.policy import ENTITY_TYPES
from llm_relay.sanitize.recognizers import Recognizer, builtin
from llm_relay.sanitize.scanner import redact
from tests.unit.sanitize_corpus import KNOWN_LIMITS, NEGATIVES, POSITIVES, Positive, sentences

RECOGNIZERS = builtin()
ALL = frozenset(ENTITY_TYPES)

# A pattern whose syntax the stdlib cannot read has no width computed for it: its bound is written here, with the
# reason it holds. Every built-in pattern is stdlib syntax today.
DOCUMENTED_BOUNDS: dict[str, int] = {}


def _render(entity: str) -> str:
    return f"[{entity}]"


def _positive_id(positive: Positive) -> str:
    return f"{positive.entity}-{positive.origin}-{positive.value[:24]}"


def _corpus_texts() -> Iterator[str]:
    """Every text of the corpus: the positives alone and in their sentences, the negatives, the known limits."""
    for positive in POSITIVES:
        yield positive.value
        yield from sentences(positive.value)
    yield from NEGATIVES
    yield from (limit.text for limit in KNOWN_LIMITS)


def test_entity_types_are_the_recognizers_in_order():
    assert tuple(RECOGNIZERS) == ENTITY_TYPES
    assert tuple(builtin("DE")) == ENTITY_TYPES
    assert all(recognizer.entity == name for name, recognizer in RECOGNIZERS.items())


# --- positives and negatives --------------------------------------------------------------------------------------
@pytest.mark.parametrize("positive", POSITIVES, ids=_positive_id)
def test_a_positive_is_replaced_whole_and_nothing_else_changes(positive: Positive) -> None:
    # GIVEN every built-in recognizer, national phone numbers read in the positive's region
    detector = detector_for(ALL, positive.region)
    for text in [positive.value, *sentences(positive.value)]:
        # WHEN the text is redacted at once
        piece = redact(detector, text, _render)
        # THEN exactly the value is replaced, by its own entity type
        assert piece.text == text.replace(positive.value, f"[{positive.entity}]"), text
        assert piece.entities == [positive.entity], text
        assert piece.first_at == text.index(positive.value)


def test_the_corpus_covers_every_entity_type_from_several_sources():
    origins: dict[str, set[str]] = {}
    for positive in POSITIVES:
        origins.setdefault(positive.entity, set()).add(positive.origin)
    assert set(origins) == set(ENTITY_TYPES)
    assert all(len(found) >= 2 for found in origins.values()), origins


@pytest.mark.parametrize("text", NEGATIVES)
def test_a_negative_passes_untouched(text: str) -> None:
    piece = redact(detector_for(ALL, "US"), text, _render)
    assert (piece.text, piece.entities) == (text, [])


@pytest.mark.parametrize("limit", KNOWN_LIMITS, ids=lambda limit: limit.text[:30])
def test_a_known_limit_is_still_what_its_entry_says(limit):
    # A limit lifted by a better recognizer fails here: its text then belongs with the negatives.
    assert redact(detector_for(ALL, "US"), limit.text, _render).text == limit.redacted


def test_the_phone_validator_asks_bare_digit_groups_to_be_grouped_like_a_number():
    # GIVEN the digits of a date and hour and of an order number, each a valid US number when read alone
    phone = RECOGNIZERS["PHONE_NUMBER"].validate
    assert phone is not None
    # THEN grouped as they are, they are not phone numbers
    assert not phone("2024-01-15 10")
    assert not phone("2024-000123")
    # AND the same digits grouped as a US number, or behind a `+` or an area code in parentheses, are
    assert phone("202-401-1510")
    assert phone("+1 2024000123")
    assert phone("(202) 400-0123")


# --- bounds -------------------------------------------------------------------------------------------------------
def _stdlib_width(pattern: str) -> int | None:
    """The pattern's maximum width as the stdlib reads it; None when the stdlib cannot read it, or reads it with a
    warning (a `regex` construct it would take for something else, such as a nested set)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            re.compile(pattern)
            high = sre_parse.parse(pattern).getwidth()[1]
        except (re.error, FutureWarning, DeprecationWarning):
            return None
    return int(high)


@pytest.mark.parametrize("recognizer", RECOGNIZERS.values(), ids=lambda r: r.entity)
def test_max_len_is_the_patterns_maximum_width(recognizer: Recognizer) -> None:
    width = _stdlib_width(recognizer.pattern)
    if width is None:
        assert recognizer.entity in DOCUMENTED_BOUNDS, "stdlib cannot read this pattern: document its bound"
        assert recognizer.max_len == DOCUMENTED_BOUNDS[recognizer.entity]
    else:
        assert recognizer.entity not in DOCUMENTED_BOUNDS, "the stdlib reads this pattern: drop its documented bound"
        assert recognizer.max_len == width


@pytest.mark.parametrize("recognizer", RECOGNIZERS.values(), ids=lambda r: r.entity)
def test_the_stdlib_reads_each_pattern_as_regex_does(recognizer: Recognizer) -> None:
    # The width above is only the pattern's bound if both engines read the pattern alike: on every corpus text they
    # find the same matches.
    if _stdlib_width(recognizer.pattern) is None:
        pytest.skip("the stdlib cannot read this pattern; its bound is documented")
    ours, stdlib = recognizer.compiled(), re.compile(recognizer.pattern)
    for text in _corpus_texts():
        assert [m.span() for m in ours.finditer(text)] == [m.span() for m in stdlib.finditer(text)], text


def test_no_match_is_longer_than_max_len():
    longest: dict[str, int] = {}
    for text in _corpus_texts():
        for name, recognizer in RECOGNIZERS.items():
            for match in recognizer.compiled().finditer(text):
                longest[name] = max(longest.get(name, 0), match.end() - match.start())
    assert all(longest[name] <= RECOGNIZERS[name].max_len for name in longest)
    assert longest["PRIVATE_KEY"] > 1000  # the corpus does reach into the long patterns


def test_a_pattern_outside_the_stdlibs_syntax_needs_a_documented_bound():
    # GIVEN a pattern with a construct only `regex` reads (a Unicode property) THEN no stdlib width is claimed for it
    assert _stdlib_width(r"\p{Lu}{2}\d{2}") is None
    assert _stdlib_width(r"[[:alpha:]]{3}") is None  # a nested set to the stdlib: warned, so refused
    assert _stdlib_width(r"(?P<sep>[- ])\d(?P=sep)\d{1,2}+") == 5


# --- gates --------------------------------------------------------------------------------------------------------
def _prefixes(text: str) -> Iterator[str]:
    return (text[:end] for end in range(1, len(text) + 1))


def _gate_texts() -> Iterator[str]:
    """The corpus texts, but a long value (a private key) in two sentences only, the value first and inside: each
    prefix costs a search of its whole length, and the other sentences add no prefix of another kind."""
    for positive in POSITIVES:
        yield positive.value
        yield from sentences(positive.value)[: 2 if len(positive.value) > 200 else None]
    yield from NEGATIVES
    yield from (limit.text for limit in KNOWN_LIMITS)


@pytest.mark.parametrize("recognizer", RECOGNIZERS.values(), ids=lambda r: r.entity)
def test_the_gate_is_never_narrower_than_the_pattern(recognizer: Recognizer) -> None:
    # GIVEN the recognizer's gate, its pattern and its probe (the scanner's: where a value could still begin)
    gate = recognizer.compiled_gate()
    assert gate is not None, "every built-in recognizer has a gate"
    pattern = recognizer.compiled()
    probe = regex.compile(f"(?:{recognizer.pattern})(?!)", regex.VERSION0)
    checked = 0
    for text in _gate_texts():
        for prefix in _prefixes(text):
            # WHEN the gate refuses a text seen so far
            if gate.search(prefix):
                continue
            checked += 1
            # THEN the pattern finds nothing in it, and no value could begin in it that the next piece completes
            assert pattern.search(prefix) is None, prefix
            held = probe.search(prefix, partial=True)
            assert held is None or held.start() == len(prefix), prefix  # at the very end: nothing read yet
    assert checked > 0

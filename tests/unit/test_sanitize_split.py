"""Split invariance: a text fed to a `Scanner` in any pieces releases exactly what `redact` makes of it at once, the
same text and the same entity types in the same order, for the default recognizers and for each one alone; and a
`ChunkSanitizer` over OpenAI chunks built from the pieces sends that redaction, or in block mode nothing of the value.

The texts are the corpus's (positives in their sentences, negatives, several of them joined, and mixed into random
Unicode); the pieces are 0 to 16 characters, cycled, as a model streams them. A scanner holds back at most the
longest match of its recognizers and a look-ahead, one recognizer or several (overlapping candidates included).
"""

from __future__ import annotations

import copy
import itertools
import json
import re._parser as sre_parse  # type: ignore[import-not-found]  # the stdlib's own parser (no stub)
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_relay.sanitize.chunks import ChunkSanitizer, detector_for
from llm_relay.sanitize.policy import ENTITY_TYPES
from llm_relay.sanitize.recognizers import builtin
from llm_relay.sanitize.scanner import Detector, Piece, Scanner, redact
from tests.unit.sanitize_corpus import KNOWN_LIMITS, NEGATIVES, POSITIVES, sentences

# Hypothesis warns when the global `random` module's state moves while it draws. Here only other threads can move
# it: the full suite leaves daemon threads of earlier tests running (botocore's retry jitter draws from it). Such a
# draw changes nothing these tests generate, so the warning (an error under the suite's filters) is not one here.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

# Deterministic (no example database, a fixed seed) so that CI runs the same examples every time.
PROPERTY = settings(
    deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150
)

DEFAULT = detector_for(frozenset(ENTITY_TYPES), "US")
SINGLE = {name: Detector([recognizer]) for name, recognizer in builtin().items()}
PLACEHOLDER = "[{entity}]"

# The positives the default detector finds: national numbers of other regions are read in their own region only.
SENTENCES = {
    entity: [text for p in POSITIVES if p.entity == entity and p.region == "US" for text in sentences(p.value)]
    for entity in ENTITY_TYPES
}
VALUES = [p.value for p in POSITIVES]
QUIET = [*NEGATIVES, *(limit.text for limit in KNOWN_LIMITS)]

# A positive sentence, the entity type first so that the 200 phone numbers do not crowd out the 3 JWTs. Hypothesis
# draws the first elements of a list most often: the entity types go shortest values first, so that the private keys
# (each costs a scan of all it holds for every piece) come up in about one example in ten, not one in four.
CHEAP_FIRST = sorted(ENTITY_TYPES, key=lambda entity: max(len(text) for text in SENTENCES[entity]))
positive_sentences = st.sampled_from(CHEAP_FIRST).flatmap(lambda entity: st.sampled_from(SENTENCES[entity]))
corpus_texts = st.one_of(positive_sentences, st.sampled_from(QUIET))
separators = st.sampled_from(["", " ", "\n", ", "])
texts = st.builds(lambda parts, sep: sep.join(parts), st.lists(corpus_texts, min_size=1, max_size=3), separators)
# Piece sizes, cycled over the text; an empty piece is a chunk that carries no text.
sizes = st.builds(lambda first, rest: [first, *rest], st.integers(1, 16), st.lists(st.integers(0, 16), max_size=11))


def _render(entity: str) -> str:
    return PLACEHOLDER.format(entity=entity)


def _look_ahead(tree: Any) -> int:
    """The most any look-ahead in a parsed pattern reads (stdlib parser): how far past a match its boundary looks."""
    widest = 0
    for op, av in tree:
        if op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT) and av[0] == 1:
            widest = max(widest, av[1].getwidth()[1])
        for child in av if isinstance(av, tuple | list) else ():
            if isinstance(child, sre_parse.SubPattern):
                widest = max(widest, _look_ahead(child))
            elif isinstance(child, list):  # a branch's alternatives
                widest = max([widest, *(_look_ahead(branch) for branch in child)])
    return widest


def held_bound(detector: Detector) -> int:
    """What a scanner may hold back at most: the probe's cut is where a value could still begin, and from it a
    pattern has read at most its `max_len` characters and its look-aheads `look` more; a value chosen across the cut
    is released whole, and a candidate crossing it only sets where its own recognizer's search goes on. So: the
    longest match of the set plus the widest look-ahead, for one recognizer or several."""
    return max(r.max_len + _look_ahead(sre_parse.parse(r.pattern)) for r in detector.recognizers)


def _pieces(text: str, cycle: list[int]) -> Iterator[str]:
    """`text` in pieces of the sizes of `cycle`, over and over. A long text's pieces are at least 1/400 of it: every
    feed scans all that is held, and a private key fed one character at a time would cost a second or two."""
    least = len(text) // 400
    at = 0
    for size in itertools.cycle(cycle):
        if at >= len(text):
            return
        size = size and max(size, least)
        yield text[at : at + size]
        at += size


def _check_piece(piece: Piece) -> None:
    """A released piece's own bookkeeping: `first_at` is where its first placeholder begins."""
    if piece.entities:
        assert piece.first_at is not None
        assert piece.text.startswith(_render(piece.entities[0]), piece.first_at)
    else:
        assert piece.first_at is None


def _stream(detector: Detector, pieces: list[str]) -> tuple[Piece, int]:
    """What a scanner releases over the pieces and at the end, joined, and the most it held back at once."""
    scanner = Scanner(detector, _render)
    joined = Piece()
    most_held = 0
    for part in pieces:
        piece = scanner.feed(part)
        _check_piece(piece)
        joined.text += piece.text
        joined.entities += piece.entities
        most_held = max(most_held, scanner.held)
    piece = scanner.finish()
    _check_piece(piece)
    assert scanner.held == 0
    joined.text += piece.text
    joined.entities += piece.entities
    return joined, most_held


def _assert_invariant(detector: Detector, text: str, pieces: list[str]) -> int:
    assert "".join(pieces) == text
    streamed, most_held = _stream(detector, pieces)
    at_once = redact(detector, text, _render)
    assert streamed.text == at_once.text
    assert streamed.entities == at_once.entities
    return most_held


@st.composite
def cut_texts(draw: st.DrawFn, parts: st.SearchStrategy[list[str]]) -> tuple[str, list[str]]:
    """Corpus texts joined, and the pieces the joined text arrives in: cut anywhere, or (as when a model's chunks end
    with its words) each part cut on its own, so that a piece ends right before a value and its look-behind."""
    chosen, sep, cycle = draw(parts), draw(separators), draw(sizes)
    text = sep.join(chosen)
    if not draw(st.booleans()):
        return text, list(_pieces(text, cycle))
    pieces = [piece for part in chosen for piece in [sep, *_pieces(part, cycle)]][1:]
    return text, pieces


# --- the scanner --------------------------------------------------------------------------------------------------
@PROPERTY
@given(cut=cut_texts(st.lists(corpus_texts, min_size=1, max_size=3)))
def test_the_default_recognizers_release_the_same_redaction_however_the_text_is_cut(cut):
    # AND what is held stays within the set's bound (a private key's, longer than most of these texts)
    assert _assert_invariant(DEFAULT, *cut) <= held_bound(DEFAULT)


@PROPERTY
@given(data=st.data(), entity=st.sampled_from(CHEAP_FIRST))
def test_each_recognizer_alone_releases_the_same_redaction_however_the_text_is_cut(data, entity):
    # GIVEN one recognizer, and a text with one of its values among other corpus texts
    detector = SINGLE[entity]
    own = st.sampled_from(SENTENCES[entity])
    parts = st.tuples(own, st.lists(corpus_texts, max_size=2)).flatmap(lambda t: st.permutations([t[0], *t[1]]))
    text, pieces = data.draw(cut_texts(parts))
    # THEN the stream adds up to the redaction at once
    most_held = _assert_invariant(detector, text, pieces)
    # AND holds back at most its longest match and a look-ahead
    assert most_held <= held_bound(detector)


@PROPERTY
@given(cut=cut_texts(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(VALUES)), min_size=1, max_size=6)))
def test_random_unicode_around_values_releases_the_same_redaction(cut):
    _assert_invariant(DEFAULT, *cut)


# The characters values are made of: random text of them makes candidates that overlap, chain and are refused.
DENSE = "0123456789 -.:+()@_/=\nABDEGIKNRSTxyzabcdef"


@PROPERTY
@given(data=st.data(), entity=st.sampled_from(CHEAP_FIRST))
def test_random_text_around_values_of_one_recognizer_releases_the_same_redaction(data, entity):
    values = st.sampled_from([p.value for p in POSITIVES if p.entity == entity])
    noise = st.one_of(st.text(max_size=12), st.text(DENSE, max_size=40))
    text, pieces = data.draw(cut_texts(st.lists(st.one_of(noise, values), min_size=1, max_size=5)))
    most_held = _assert_invariant(SINGLE[entity], text, pieces)
    assert most_held <= held_bound(SINGLE[entity])


def test_a_value_cut_into_single_characters_is_never_released_in_part():
    # GIVEN a card number fed one character at a time
    scanner = Scanner(DEFAULT, _render)
    released = "".join(scanner.feed(c).text for c in "Pay with 4111 1111 1111 1111 today") + scanner.finish().text
    # THEN no digit of it was ever released
    assert released == "Pay with [CREDIT_CARD] today"


def test_a_candidate_across_the_cut_does_not_hold_back_what_comes_before_it():
    # GIVEN a card candidate of 19 digits (37 characters) with a space before its last two, and 17 more digits: a card
    # could begin after that space and run on, so the cut goes there, and a candidate (refused by Luhn) crosses it
    card = SINGLE["CREDIT_CARD"]
    text = "-".join("1" * 17) + " 1-1 " + "-".join("1" * 17)
    scanner = Scanner(card, _render)
    released = scanner.feed(text).text
    # THEN what comes before the cut is released; only what a card could still begin with is held, within the bound
    assert released + text[len(released) :] == text and scanner.held == len(text) - len(released)
    assert scanner.held <= card.bound <= held_bound(card) == 37 + 2


def test_a_look_ahead_past_the_longest_match_is_held_too():
    # GIVEN an SSN and a dash: a digit next would make it part of a longer number
    ssn = SINGLE["US_SSN"]
    scanner = Scanner(ssn, _render)
    scanner.feed("536-14-0178-")
    # THEN all of it is held, one character more than the longest SSN
    assert scanner.held == ssn.bound + 1


def test_overlapping_candidates_of_two_recognizers_are_held_within_a_bound():
    # GIVEN digit groups in which the candidates of cards (up to 19 digits) and of phone numbers (up to 6 groups)
    # straddle each other's starts, all of them refused by their validators
    detector = Detector([SINGLE["CREDIT_CARD"].recognizers[0], SINGLE["PHONE_NUMBER"].recognizers[0]])
    scanner = Scanner(detector, _render)
    most_held = 0
    for _ in range(200):
        scanner.feed("1 2-")
        most_held = max(most_held, scanner.held)
    # THEN the tail held back stays within the longest match of the two and a look-ahead, though the text never stops
    assert most_held <= held_bound(detector) == max(held_bound(Detector([r])) for r in detector.recognizers)


# --- the chunk sanitizer ------------------------------------------------------------------------------------------
BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1705314600, "model": "gpt-4o-mini"}


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {**BASE, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def _upstream(content: Iterator[str], arguments: Iterator[str]) -> Iterator[dict[str, Any]]:
    """An answer's chunks as OpenAI streams them: the role, the content, a tool call's arguments, the finish."""
    yield _chunk({"role": "assistant", "content": ""})
    for piece in content:
        yield _chunk({"content": piece})
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "save_note", "arguments": ""}}
    yield _chunk({"tool_calls": [call]})
    for piece in arguments:
        yield _chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield _chunk({}, "tool_calls")


def _sanitized(sanitizer: ChunkSanitizer, chunks: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    for chunk in chunks:
        sent.extend(sanitizer.chunk(copy.deepcopy(chunk)))
    return sent + sanitizer.finish(BASE, complete=True)


def _texts(sent: list[dict[str, Any]]) -> tuple[str, str]:
    deltas = [choice["delta"] for chunk in sent for choice in chunk["choices"]]
    content = "".join(delta.get("content") or "" for delta in deltas)
    calls = [call for delta in deltas for call in delta.get("tool_calls") or ()]
    return content, "".join(call["function"].get("arguments") or "" for call in calls)


CHUNK_PROPERTY = settings(PROPERTY, max_examples=50)


@CHUNK_PROPERTY
@given(text=texts, note=texts, cycle=sizes)
def test_chunks_carry_the_redaction_of_the_content_and_of_the_arguments(text, note, cycle):
    # GIVEN an answer whose content and tool-call arguments (JSON text) arrive in pieces
    arguments = json.dumps({"note": note})
    sanitizer = ChunkSanitizer(DEFAULT, "redact", PLACEHOLDER)
    # WHEN the chunks pass the sanitizer
    sent = _sanitized(sanitizer, _upstream(_pieces(text, cycle), _pieces(arguments, cycle)))
    # THEN the content and the arguments read are their redactions at once, and the arguments are still JSON
    content, sent_arguments = _texts(sent)
    own_content, own_arguments = redact(DEFAULT, text, _render), redact(DEFAULT, arguments, _render)
    assert (content, sent_arguments) == (own_content.text, own_arguments.text)
    assert isinstance(json.loads(sent_arguments)["note"], str)
    assert sanitizer.counts == Counter(own_content.entities + own_arguments.entities)
    # AND the finish is the last chunk, the only one with a finish reason, and nothing is held after it
    reasons = [choice["finish_reason"] for chunk in sent for choice in chunk["choices"]]
    assert reasons[-1] == "tool_calls" and reasons.count("tool_calls") == 1
    assert sent[-1]["choices"][0]["delta"] == {}
    assert all(chunk["id"] == BASE["id"] for chunk in sent)


@CHUNK_PROPERTY
@given(before=st.lists(st.sampled_from(NEGATIVES), max_size=2), sentence=positive_sentences, cycle=sizes)
def test_block_mode_sends_nothing_of_the_first_value_and_stops(before, sentence, cycle):
    # GIVEN an answer with a value after some harmless text
    text = " ".join([*before, sentence])
    at_once = redact(DEFAULT, text, _render)
    assert at_once.first_at is not None
    sanitizer = ChunkSanitizer(DEFAULT, "block", PLACEHOLDER)
    # WHEN it streams through a blocking sanitizer
    sent = _sanitized(sanitizer, _upstream(_pieces(text, cycle), iter(())))
    # THEN what was sent is text from before the value, the stream stopped there, and the entity type is named
    content, _ = _texts(sent)
    assert text[: at_once.first_at].startswith(content)
    assert sanitizer.blocked == (at_once.entities[0],)
    assert all(choice["finish_reason"] is None for chunk in sent for choice in chunk["choices"])
    assert sanitizer.chunk(_chunk({"content": "more"})) == [] and sanitizer.finish(BASE, complete=True) == []


@CHUNK_PROPERTY
@given(sentence=positive_sentences, cycle=sizes)
def test_block_mode_stops_at_a_value_in_the_arguments(sentence, cycle):
    # GIVEN a value in a tool call's arguments
    arguments = json.dumps({"note": sentence})
    at_once = redact(DEFAULT, arguments, _render)
    assert at_once.first_at is not None
    sanitizer = ChunkSanitizer(DEFAULT, "block", PLACEHOLDER)
    # WHEN it streams through a blocking sanitizer
    sent = _sanitized(sanitizer, _upstream(iter(["Saving it."]), _pieces(arguments, cycle)))
    # THEN the arguments sent end before the value, and the stream ends blocked
    _, sent_arguments = _texts(sent)
    assert arguments[: at_once.first_at].startswith(sent_arguments)
    assert sanitizer.blocked == (at_once.entities[0],)


def test_block_mode_sends_the_text_before_the_value_that_arrives_with_it():
    # GIVEN a value that arrives in the same chunk as the text before it
    sanitizer = ChunkSanitizer(DEFAULT, "block", PLACEHOLDER)
    sent = _sanitized(sanitizer, _upstream(iter(["My card is 4111 1111 1111 1111, thanks."]), iter(())))
    # THEN that text is sent, and the stream stops at the value
    assert sanitizer.blocked == ("CREDIT_CARD",)
    assert _texts(sent)[0] == "My card is "


@CHUNK_PROPERTY
@given(text=texts, cycle=sizes, kept=st.floats(0, 1))
def test_a_stream_cut_short_sends_only_decided_text(text, cycle, kept):
    # GIVEN an answer cut short (a cancel, the deadline): no finish chunk, and the end of the text never comes
    received = text[: int(len(text) * kept)]
    sanitizer = ChunkSanitizer(DEFAULT, "redact", PLACEHOLDER)
    sent: list[dict[str, Any]] = []
    for chunk in _upstream(_pieces(received, cycle), iter(())):
        if chunk["choices"][0]["finish_reason"] is None:
            sent.extend(sanitizer.chunk(copy.deepcopy(chunk)))
    # WHEN the relay ends the stream
    sent += sanitizer.finish(BASE, complete=False)
    # THEN what was sent is a beginning of the redaction of what was received, however that text goes on
    content, _ = _texts(sent)
    assert redact(DEFAULT, received, _render).text.startswith(content)

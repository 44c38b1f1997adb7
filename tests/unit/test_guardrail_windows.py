"""Guardrail windows (pure): cut at a sentence end past the minimum, else a word end, else hard at the maximum; a
stream's text, split anywhere, is cut into the same windows; and an ApplyGuardrail answer is read without its
matched values."""

from __future__ import annotations

import random
from typing import Any

import pytest

from llm_relay.sanitize.assessment import read_assessment
from llm_relay.sanitize.windows import WindowRule, needs_assessment, next_cut, split_windows

RULE = WindowRule.for_size(10)  # minimum 10, look-ahead 20, maximum 40


def test_the_rule_for_a_size():
    assert WindowRule.for_size(50) == WindowRule(50, 100, 200)
    with pytest.raises(ValueError):
        WindowRule(10, 5, 40)


def test_nothing_is_cut_below_the_minimum():
    assert next_cut("Hi. Yes.", RULE) is None


def test_a_sentence_end_past_the_minimum_is_the_cut():
    # GIVEN a sentence ending after the minimum, inside the look-ahead
    text = "Short one. Then the rest"
    # THEN the window ends after the sentence's whitespace (the period and its space go with the sentence)
    assert next_cut(text, RULE) == len("Short one. ")
    # AND a sentence end before the minimum does not count, the first one past it does
    assert next_cut("Hi. A longer one! And more", RULE) == len("Hi. A longer one! ")


def test_a_newline_ends_a_sentence():
    assert next_cut("A list item\nnext", RULE) == len("A list item\n")


def test_a_dot_inside_a_word_is_not_a_sentence_end():
    # GIVEN an address and a number, dots without whitespace after them
    text = "mail jane.doe@example.com pi is 3.14159 ok"
    cut = next_cut(text, RULE)
    # THEN the cut is at a word end, never inside either
    assert cut is not None and text[cut - 1] == " "
    assert "jane.doe@example.com" in text[:cut] or "jane" not in text[:cut]


def test_without_a_sentence_end_the_look_ahead_is_waited_for():
    # GIVEN words past the minimum but short of the look-ahead THEN a sentence end may still come: no cut yet
    assert next_cut("one two three four", RULE) is None
    # WHEN the look-ahead is reached without one THEN the last word end inside it is the cut
    assert next_cut("one two three four five six", RULE) == len("one two three four ")


def test_an_unbroken_token_is_cut_at_the_first_word_end_past_the_look_ahead_or_hard_at_the_maximum():
    token = "x" * 25
    assert next_cut(token + " tail", RULE) == 26
    assert next_cut("y" * 39, RULE) is None
    assert next_cut("y" * 45, RULE) == 40


def test_final_makes_the_rest_a_last_window():
    windows, rest = split_windows("A sentence here. tail", RULE)
    assert (windows, rest) == (["A sentence here. "], "tail")
    assert split_windows("tail", RULE, final=True) == (["tail"], "")
    assert split_windows("", RULE, final=True) == ([], "")


@pytest.mark.parametrize("seed", range(20))
def test_a_stream_split_anywhere_is_cut_into_the_same_windows(seed):
    # GIVEN a text of sentences, words and one long token, fed in random pieces
    rng = random.Random(seed)
    words = ["alpha", "beta.", "gamma", "delta!", "eps\n", "z" * 50, "theta?", "iota"]
    text = " ".join(rng.choice(words) for _ in range(60))
    pieces, start = [], 0
    while start < len(text):
        end = start + rng.randint(1, 15)
        pieces.append(text[start:end])
        start = end
    # WHEN windows are taken as the pieces arrive, the rest flushed at the end
    streamed, held = [], ""
    for piece in pieces:
        windows, held = split_windows(held + piece, RULE)
        streamed += windows
    streamed += split_windows(held, RULE, final=True)[0]
    # THEN they are the windows of the whole text at once, cover it exactly, and none is over the maximum
    assert streamed == split_windows(text, RULE, final=True)[0]
    assert "".join(streamed) == text
    assert all(len(w) <= RULE.maximum for w in streamed)
    assert all(len(w) >= RULE.minimum for w in streamed[:-1])


def test_whitespace_needs_no_assessment():
    assert not needs_assessment(" \n\t")
    assert needs_assessment(" a ")


# --- reading an ApplyGuardrail answer ------------------------------------------------------------------------


def _answer(action: str, outputs: list[str], **policies: Any) -> dict[str, Any]:
    return {"action": action, "outputs": [{"text": t} for t in outputs], "assessments": [policies]}


def test_an_anonymization_releases_the_guardrails_text_and_counts_kinds_not_values():
    # GIVEN a name anonymized, and a detection without action
    pii = [
        {"match": "Jane Doe", "type": "NAME", "action": "ANONYMIZED", "detected": True},
        {"match": "jane@example.com", "type": "EMAIL", "action": "NONE", "detected": True},
    ]
    answer = _answer("GUARDRAIL_INTERVENED", ["Ask {NAME}."], sensitiveInformationPolicy={"piiEntities": pii})
    # WHEN it is read
    assessment = read_assessment(answer, ["Ask Jane Doe."])
    # THEN the action, the text to release and the finding's kind; no value anywhere
    assert (assessment.action, assessment.text, assessment.findings) == ("ANONYMIZED", "Ask {NAME}.", {"NAME": 1})
    assert "Jane" not in repr(assessment) and "jane@" not in repr(assessment)


def test_the_strongest_action_wins_and_a_block_keeps_the_input_text():
    policies = {
        "topicPolicy": {"topics": [{"name": "Finance", "type": "DENY", "action": "BLOCKED"}]},
        "sensitiveInformationPolicy": {
            "piiEntities": [{"match": "Jane", "type": "NAME", "action": "ANONYMIZED"}],
            "regexes": [{"name": "Ticket", "match": "T-1", "action": "ANONYMIZED"}],
        },
        "wordPolicy": {"customWords": [{"match": "secretword", "action": "BLOCKED"}], "managedWordLists": []},
    }
    assessment = read_assessment(_answer("GUARDRAIL_INTERVENED", ["Sorry."], **policies), ["raw"])
    assert assessment.action == "BLOCKED" and assessment.text == "raw"
    assert assessment.findings == {"topic:Finance": 1, "NAME": 1, "regex:Ticket": 1, "word:custom": 1}
    assert "secretword" not in repr(assessment)


def test_no_intervention():
    assessment = read_assessment({"action": "NONE", "outputs": [], "assessments": [{}]}, ["fine"])
    assert (assessment.action, assessment.text, assessment.findings) == ("NONE", "fine", {})


def test_the_reading_fails_safe():
    # An intervention no assessment explains, an unknown action, outputs that do not line up with the content:
    # each is a block
    unexplained = read_assessment({"action": "GUARDRAIL_INTERVENED", "outputs": [], "assessments": []}, ["x"])
    assert unexplained.action == "BLOCKED" and unexplained.findings == {"guardrail:other": 1}
    unknown = {"piiEntities": [{"type": "NAME", "action": "REDACTED"}]}
    assert read_assessment(_answer("GUARDRAIL_INTERVENED", [], sensitiveInformationPolicy=unknown), ["x"]).action == (
        "BLOCKED"
    )
    masked = {"piiEntities": [{"type": "NAME", "action": "ANONYMIZED"}]}
    misaligned = _answer("GUARDRAIL_INTERVENED", ["{NAME}"], sensitiveInformationPolicy=masked)
    assert read_assessment(misaligned, ["a", "b"]).action == "BLOCKED"

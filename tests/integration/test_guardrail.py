"""Amazon Bedrock Guardrails against the local Bedrock server on loopback: botocore's own `bedrock-runtime`
client calls `ApplyGuardrail` (signed, on its real path, its answer parsed by botocore), `GuardrailClient` reads it,
and `OutputGuardrail` judges a stream's windows in sync and async modes, with throttling and timeouts failing
closed or open. Each test is bounded (`anyio.fail_after`) and waits for what it checks, never for a time."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import anyio
import boto3.session
import httpx
import pytest

from llm_relay.sanitize.guardrail import (
    ATTEMPTS,
    GuardrailClient,
    GuardrailConfig,
    GuardrailUnavailable,
    OutputGuardrail,
    assess_prompt,
)
from llm_relay.sanitize.windows import WindowRule, split_windows
from llm_relay_dev.guardrail_local import GuardrailRule
from tests.integration.guardrail_support import LocalBedrock as Local
from tests.integration.guardrail_support import local_bedrock, use_static_credentials
from tests.waiting import PATIENCE_S, wait_until

pytestmark = pytest.mark.anyio

RULES = (
    GuardrailRule(r"(?i)\binvestment advice\b", "BLOCKED", "topic:Investment advice"),
    GuardrailRule(r"\b(?:Jane Doe|John Smith)\b", "ANONYMIZED", "NAME"),
    GuardrailRule(r"\bT-\d{4}\b", "ANONYMIZED", "regex:Ticket"),
)
RAW_VALUES = ("Jane Doe", "John Smith", "T-1234", "investment advice")
SLOW_MS = 30_000.0  # a slow answer is held this long unless the client leaves first (it always does here)
WINDOW = 20


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def bedrock() -> Iterator[Local]:
    with local_bedrock(RULES, SLOW_MS) as local:
        yield local


@pytest.fixture(autouse=True)
def _static_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    use_static_credentials(monkeypatch)


@pytest.fixture
def guardrail(bedrock: Local, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A factory of (client, config) for a guardrail of this test's own (its calls are told apart by id)."""
    clients: list[GuardrailClient] = []

    def make(**overrides: Any) -> tuple[GuardrailClient, GuardrailConfig]:
        config = GuardrailConfig(
            identifier=f"gr-{request.node.name[:40]}",
            version="1",
            window_chars=WINDOW,
            endpoint_url=bedrock.base,
            region="us-east-1",
        )
        config = replace(config, **overrides)
        client = GuardrailClient(config)  # built here: the production client, timeouts and retries
        clients.append(client)
        return client, config

    yield make
    for client in clients:
        client.close()


async def _stream(stage: OutputGuardrail, text: str, channel: object = 0, piece: int = 7) -> str:
    """Feed `text` in pieces of `piece` characters, then finish the channel: everything released."""
    released = [await stage.feed(channel, text[i : i + piece]) for i in range(0, len(text), piece)]
    return "".join(released) + await stage.finish(channel)


def _windows(text: str) -> list[str]:
    return [w for w in split_windows(text, WindowRule.for_size(WINDOW), final=True)[0] if w.strip()]


# --- the client ------------------------------------------------------------------------------------------------


async def test_the_client_reads_an_anonymization_a_block_and_no_action(bedrock: Local, guardrail: Any) -> None:
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail()
        # WHEN a name and a ticket number, a denied topic, and plain text are assessed as output
        masked = await client.assess("Ask Jane Doe about T-1234.", "OUTPUT")
        blocked = await client.assess("Here is some investment advice.", "OUTPUT")
        plain = await client.assess("The fox jumps.", "OUTPUT")
    # THEN the guardrail's text replaces the values, the kinds are counted, a block keeps nothing of its answer
    assert (masked.action, masked.text) == ("ANONYMIZED", "Ask {NAME} about {Ticket}.")
    assert masked.findings == {"NAME": 1, "regex:Ticket": 1}
    assert (blocked.action, blocked.findings) == ("BLOCKED", {"topic:Investment advice": 1})
    assert (plain.action, plain.text, plain.findings) == ("NONE", "The fox jumps.", {})
    # AND the server saw three signed calls for this guardrail version, as OUTPUT, by size only
    calls = bedrock.calls(config.identifier)
    assert [(c.version, c.source, c.items, c.action) for c in calls] == [
        ("1", "OUTPUT", 1, "GUARDRAIL_INTERVENED"),
        ("1", "OUTPUT", 1, "GUARDRAIL_INTERVENED"),
        ("1", "OUTPUT", 1, "NONE"),
    ]
    assert calls[0].chars == len("Ask Jane Doe about T-1234.")


async def test_the_prompt_is_one_call_with_a_content_item_per_text(bedrock: Local, guardrail: Any) -> None:
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail()
        judged = await assess_prompt(client, ["You are helpful.", " ", "Write to John Smith."])
    # THEN the texts come back in order, the blank one untouched and unsent, the name anonymized
    assert judged.action == "ANONYMIZED"
    assert judged.texts == ("You are helpful.", " ", "Write to {NAME}.")
    assert judged.findings == {"NAME": 1}
    [call] = bedrock.calls(config.identifier)
    assert (call.source, call.items) == ("INPUT", 2)


async def test_throttling_is_unavailable_after_botocores_retry(bedrock: Local, guardrail: Any) -> None:
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail()
        with pytest.raises(GuardrailUnavailable) as raised:
            await client.assess("guardrail:throttle please", "OUTPUT")
    assert raised.value.reason == "ThrottlingException" and raised.value.status_code == 503
    assert [c.fault for c in bedrock.calls(config.identifier)] == ["throttle"] * ATTEMPTS


async def test_a_slow_guardrail_is_abandoned_at_the_timeout(bedrock: Local, guardrail: Any) -> None:
    # GIVEN an answer held far past the client's timeout
    client, config = guardrail(timeout_s=0.5)
    started = time.monotonic()
    with anyio.fail_after(PATIENCE_S), pytest.raises(GuardrailUnavailable) as raised:
        await client.assess("guardrail:slow answer", "OUTPUT")
    # THEN the call gives up at its own bound, not at the server's answer
    assert raised.value.reason == "timeout"
    assert time.monotonic() - started < SLOW_MS / 1000 / 2
    # AND the abandoned thread ends by itself: botocore's read timeout closes each attempt's connection
    calls = await anyio.to_thread.run_sync(
        wait_until,
        lambda: (
            len(bedrock.calls(config.identifier)) == ATTEMPTS
            and all(c.client_left for c in bedrock.calls(config.identifier))
        ),
        "every attempt abandoned by the client",
    )
    assert calls


async def test_an_injected_client_stays_the_callers_and_a_built_one_is_renewed(bedrock: Local, guardrail: Any) -> None:
    with anyio.fail_after(PATIENCE_S):
        # GIVEN a botocore client of the caller's
        _, config = guardrail()
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
        own = session.client("bedrock-runtime", region_name="us-east-1", endpoint_url=bedrock.base)
        injected = GuardrailClient(config, client=own)
        assert (await injected.assess("Ask Jane Doe.", "OUTPUT")).text == "Ask {NAME}."
        # WHEN the guardrail client is closed THEN the caller's client still works
        injected.close()
        assert (
            own.apply_guardrail(
                guardrailIdentifier=config.identifier,
                guardrailVersion="1",
                source="INPUT",
                content=[{"text": {"text": "x"}}],
            )["action"]
            == "NONE"
        )
        own.close()
        # AND a client built by GuardrailClient is replaced by `renew` (a SnapStart restore) and goes on working
        built, _ = guardrail()
        built.renew()
        assert (await built.assess("The fox.", "OUTPUT")).action == "NONE"


async def test_an_unsigned_call_is_refused_and_calls_are_listed_without_text(bedrock: Local, guardrail: Any) -> None:
    # GIVEN one signed call of this test's own (the list does not depend on what other tests called)
    client, config = guardrail()
    with anyio.fail_after(PATIENCE_S):
        await client.assess("Ask Jane Doe.", "OUTPUT")
        async with httpx.AsyncClient(base_url=bedrock.base) as http:
            # WHEN a call comes unsigned THEN it is refused
            response = await http.post("/guardrail/gr-x/version/1/apply", json={"source": "OUTPUT"})
            assert response.status_code == 403
            calls = (await http.get("/mock/guardrail/calls")).json()
    # AND the calls are listed by what was asked and answered, never with the text
    listed = [call for call in calls if call["guardrail"] == config.identifier]
    assert "Jane Doe" not in str(listed)
    assert listed and set(listed[0]) == {
        "guardrail",
        "version",
        "source",
        "items",
        "chars",
        "action",
        "fault",
        "client_left",
    }


# --- the output stage, sync mode -------------------------------------------------------------------------------


async def test_sync_mode_releases_only_judged_windows_with_values_anonymized(bedrock: Local, guardrail: Any) -> None:
    text = "Please ask Jane Doe. She knows about T-1234 and the rest of it.\nThat is all for now."
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail()
        stage = OutputGuardrail(client, config)
        released = []
        for i in range(0, len(text), 5):
            before = len(bedrock.calls(config.identifier))
            out = await stage.feed("content", text[i : i + 5])
            # THEN nothing is released that was not judged first
            assert not out or len(bedrock.calls(config.identifier)) > before
            released.append(out)
        released.append(await stage.finish("content"))
    assert "".join(released) == text.replace("Jane Doe", "{NAME}").replace("T-1234", "{Ticket}")
    assert stage.action == "ANONYMIZED" and stage.findings == {"NAME": 1, "regex:Ticket": 1}
    assert stage.blocked is None and not stage.intervened.is_set() and stage.failures == 0
    # AND one call per window
    assert len(bedrock.calls(config.identifier)) == len(_windows(text)) == stage.assessed


async def test_sync_mode_never_releases_a_blocked_window_nor_anything_after(bedrock: Local, guardrail: Any) -> None:
    text = "A harmless opening line. Now some investment advice for you. Then more text that follows."
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail()
        stage = OutputGuardrail(client, config)
        released = await _stream(stage, text)
        calls = len(bedrock.calls(config.identifier))
        after = await stage.feed(0, "More words. Even more words follow here. ") + await stage.finish(1)
    # THEN what came before the window is out, the window and everything after it are not
    assert released == "A harmless opening line. " and after == ""
    assert stage.blocked is not None and stage.blocked.code == "content_filtered"
    assert "topic:Investment advice" in stage.blocked.message and stage.intervened.is_set()
    assert stage.action == "BLOCKED"
    assert len(bedrock.calls(config.identifier)) == calls  # nothing judged after the block


async def test_sync_mode_keeps_channels_apart(guardrail: Any) -> None:
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail()
        stage = OutputGuardrail(client, config)
        content, tool = "Say hello to Jane Doe today. ", '{"name": "John Smith", "city": "Paris"}'
        out: dict[object, list[str]] = {"content": [], ("tool", 0): []}
        for i in range(0, max(len(content), len(tool)), 4):
            out["content"].append(await stage.feed("content", content[i : i + 4]))
            out[("tool", 0)].append(await stage.feed(("tool", 0), tool[i : i + 4]))
        for channel in out:
            out[channel].append(await stage.finish(channel))
    assert "".join(out["content"]) == "Say hello to {NAME} today. "
    assert "".join(out[("tool", 0)]) == '{"name": "{NAME}", "city": "Paris"}'


# --- the output stage, async mode ------------------------------------------------------------------------------


async def test_async_mode_releases_at_once_and_counts_what_it_finds(bedrock: Local, guardrail: Any) -> None:
    text = "Please ask Jane Doe. She knows the rest of it.\nThat is all for now, thanks."
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail(mode="async")
        stage = OutputGuardrail(client, config)
        async with anyio.create_task_group() as tg:
            stage.start(tg)
            released = await _stream(stage, text)
            stage.close()  # the task group then waits for the queued windows' answers
    # THEN the text went out as written (anonymizing cannot take back what was shown), the finding is counted
    assert released == text
    assert stage.action == "ANONYMIZED" and stage.findings == {"NAME": 1}
    assert stage.blocked is None and not stage.intervened.is_set()
    assert len(bedrock.calls(config.identifier)) == len(_windows(text)) == stage.assessed


async def test_async_mode_intervenes_when_a_block_comes_back(guardrail: Any) -> None:
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail(mode="async")
        stage = OutputGuardrail(client, config)
        async with anyio.create_task_group() as tg:
            stage.start(tg)
            first = await stage.feed(0, "Here comes investment advice, sentence one. ")
            # WHEN the block comes back THEN `intervened` is set, and the assessor ends (the task group can exit)
            await stage.intervened.wait()
    assert first == "Here comes investment advice, sentence one. "
    assert stage.blocked is not None and stage.blocked.code == "content_filtered"
    assert await stage.feed(0, "anything else. ") == "" and await stage.finish(0) == ""


# --- an unavailable guardrail ------------------------------------------------------------------------------------


async def test_fail_closed_stops_the_stream_when_the_guardrail_throttles(guardrail: Any) -> None:
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail(on_error="fail_closed")
        stage = OutputGuardrail(client, config)
        released = await _stream(stage, "guardrail:throttle is in this window. ")
    assert released == "" and stage.failures == 1 and stage.intervened.is_set()
    assert stage.blocked is not None and stage.blocked.code == "guardrail_unavailable"
    assert stage.action is None


async def test_fail_open_releases_unassessed_text_and_logs_no_text(
    guardrail: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llm_relay")
    text = "guardrail:throttle with Jane Doe here. "
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail(on_error="fail_open")
        stage = OutputGuardrail(client, config)
        released = await _stream(stage, text)
    assert released == text and stage.failures == 1 and stage.blocked is None
    [warning] = [r for r in caplog.records if r.name == "llm_relay.sanitize.guardrail"]
    assert warning.levelno == logging.WARNING and "fail_open" in warning.getMessage()
    assert warning.guardrail_error == "ThrottlingException"  # type: ignore[attr-defined]


async def test_timeouts_fail_open_in_sync_mode_and_closed_in_async_mode(guardrail: Any) -> None:
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail(on_error="fail_open", timeout_s=0.5)
        opened = OutputGuardrail(client, config)
        assert await _stream(opened, "guardrail:slow but released. ") == "guardrail:slow but released. "
        assert opened.failures == 1 and opened.blocked is None

        client, config = guardrail(on_error="fail_closed", timeout_s=0.5, mode="async")
        closed = OutputGuardrail(client, config)
        async with anyio.create_task_group() as tg:
            closed.start(tg)
            assert await closed.feed(0, "guardrail:slow is shown at once. ") == "guardrail:slow is shown at once. "
            await closed.intervened.wait()
    assert closed.blocked is not None and closed.blocked.code == "guardrail_unavailable"


async def test_no_raw_value_reaches_a_log_record(guardrail: Any, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN every path that logs: an anonymization, a block, a fail-open failure (the relay's own loggers at DEBUG)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="llm_relay")
    with anyio.fail_after(PATIENCE_S):
        client, config = guardrail(on_error="fail_open")
        for text in ("Ask Jane Doe about T-1234. ", "guardrail:throttle John Smith. ", "Some investment advice. "):
            await _stream(OutputGuardrail(client, config), text)
    # THEN no record carries a matched value, in its message or in its extra fields
    assert caplog.records
    for record in caplog.records:
        rendered = record.getMessage() + repr(vars(record))
        assert not [value for value in RAW_VALUES if value in rendered], record

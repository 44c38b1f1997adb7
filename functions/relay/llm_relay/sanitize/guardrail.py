"""Amazon Bedrock Guardrails (`ApplyGuardrail`) in the compliance gate: the client, the one place its failures
become `GuardrailUnavailable`, and `OutputGuardrail`, the stage that judges one stream's output in windows.

The client runs botocore's blocking call in a worker thread and waits at most `RELAY_GUARDRAIL_TIMEOUT_S` for it:
past that the call is abandoned (its thread ends at botocore's own read timeout, a moment later) and the guardrail
counts as unavailable. botocore retries once (a throttle), inside the same bound.

The output stage cuts each channel's text (a choice's content, a tool call's arguments) into windows
(`windows.py`) and has each judged (source `OUTPUT`):

- sync mode: a window is released only once judged, anonymized values replaced by the guardrail's placeholders;
  a blocked window is never released, nor anything after it. The latency is one call per window.
- async mode: text is released at once and judged behind the stream, up to `ASYNC_CALLS` calls at a time; a
  block ends the stream (`intervened`) as soon as it is known, after the window was shown. Anonymization cannot
  take back what was shown: it is only counted. The stream's end waits (bounded) for the windows still being
  judged, so that the last ones too can end it and are counted.

An unavailable guardrail under `fail_closed` ends the stream as a block (`guardrail_unavailable`); under
`fail_open` the text is released unassessed, and the failure counted and logged. Nothing here logs or keeps
text: findings are counted by kind (`assessment.py`).
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ..errors import ConfigurationError, GuardrailUnavailable
from .assessment import Action, Assessment, read_assessment, stronger
from .windows import WindowRule, needs_assessment, split_windows

if TYPE_CHECKING:
    import anyio.abc
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ..settings import Settings

__all__ = [
    "Assessment",
    "GuardrailBlock",
    "GuardrailClient",
    "GuardrailConfig",
    "GuardrailUnavailable",
    "OutputGuardrail",
    "assess_prompt",
]

logger = logging.getLogger(__name__)

Source = Literal["INPUT", "OUTPUT"]
ATTEMPTS = 2  # botocore's: one retry (a throttle), inside the call's own bound
CONNECT_TIMEOUT_S = 1.0
ASYNC_CALLS = 4  # async mode: calls in flight at once, so a fast stream does not leave the assessor far behind


@dataclass(frozen=True, slots=True)
class GuardrailConfig:
    """The deployment's guardrail (`RELAY_GUARDRAIL_*`). `region` None: the boto3 session's."""

    identifier: str
    version: str = "DRAFT"
    mode: Literal["sync", "async"] = "sync"
    window_chars: int = 50
    on_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    timeout_s: float = 2.0
    endpoint_url: str | None = None
    region: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> GuardrailConfig | None:
        """The configured guardrail, or None when `RELAY_GUARDRAIL_ID` is not set."""
        if settings.guardrail_id is None:
            return None
        return cls(
            identifier=settings.guardrail_id.strip(),
            version=settings.guardrail_version,
            mode=settings.guardrail_mode,
            window_chars=settings.guardrail_window_chars,
            on_error=settings.guardrail_on_error,
            timeout_s=settings.guardrail_timeout_s,
            endpoint_url=settings.guardrail_endpoint,
            region=settings.aws_region,
        )


def build_client(config: GuardrailConfig) -> Any:
    """A `bedrock-runtime` client for the guardrail: short timeouts, one retry. Its read timeout is the call's
    bound, so a call the relay abandoned does not keep its thread much longer. No region anywhere refuses the start
    (`ConfigurationError`) rather than failing every call."""
    import boto3.session
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    botocore_config = Config(
        connect_timeout=min(CONNECT_TIMEOUT_S, config.timeout_s),
        read_timeout=config.timeout_s,
        retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
    )
    try:
        return boto3.session.Session().client(
            "bedrock-runtime", region_name=config.region, endpoint_url=config.endpoint_url, config=botocore_config
        )
    except NoRegionError:
        raise ConfigurationError("RELAY_GUARDRAIL_ID is set but no region is: set AWS_REGION") from None


class GuardrailClient:
    """`ApplyGuardrail` for one guardrail version. `client`: a boto3 `bedrock-runtime` client (built here when
    absent, once, and then closed by `close`)."""

    def __init__(self, config: GuardrailConfig, client: Any | None = None) -> None:
        self.config = config
        self._built = client is None
        self._client = build_client(config) if client is None else client

    async def assess(self, text: str, source: Source) -> Assessment:
        """The guardrail's judgement of one text (one content item)."""
        return await self.assess_items([text], source)

    async def assess_items(self, texts: Sequence[str], source: Source) -> Assessment:
        """One call judging `texts` as separate content items; `Assessment.texts` keeps their order."""
        from botocore.exceptions import BotoCoreError, ClientError

        call = functools.partial(
            self._client.apply_guardrail,
            guardrailIdentifier=self.config.identifier,
            guardrailVersion=self.config.version,
            source=source,
            content=[{"text": {"text": text}} for text in texts],
        )
        try:
            with anyio.fail_after(self.config.timeout_s):
                response = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except TimeoutError as exc:
            raise _unavailable("timeout", f"no answer within {self.config.timeout_s:g}s") from exc
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            raise _unavailable(code, code) from exc
        except BotoCoreError as exc:
            raise _unavailable(type(exc).__name__, type(exc).__name__) from exc
        return read_assessment(response, texts)

    def renew(self) -> None:
        """After a SnapStart restore: a client built here during init holds credentials resolved then, shared by
        every restored copy, so a new one is built (an injected client is the caller's)."""
        if self._built:
            stale, self._client = self._client, build_client(self.config)
            stale.close()

    def close(self) -> None:
        """Close the connection pool of a client built here (an injected client is the caller's)."""
        if self._built:
            self._client.close()


def _unavailable(reason: str, detail: str) -> GuardrailUnavailable:
    return GuardrailUnavailable(f"The content guardrail is unavailable ({detail}).", reason=reason)


async def assess_prompt(client: GuardrailClient, texts: list[str]) -> Assessment:
    """The prompt's judgement (source `INPUT`): one call, one content item per text (each message judged as its
    own block, the whole prompt in one bill). `texts` of the result line up with `texts` given, anonymized where
    the guardrail did; blank texts are not sent and come back as they were. Raises `GuardrailUnavailable`: what
    that means (refuse, or go on unassessed) is the caller's policy."""
    sent = [i for i, text in enumerate(texts) if needs_assessment(text)]
    if not sent:
        return Assessment("NONE", "\n\n".join(texts), {}, tuple(texts))
    judged = await client.assess_items([texts[i] for i in sent], "INPUT")
    released = list(texts)
    for i, text in zip(sent, judged.texts, strict=True):
        released[i] = text
    return Assessment(judged.action, "\n\n".join(released), judged.findings, tuple(released))


@dataclass(frozen=True, slots=True)
class GuardrailBlock:
    """Why the guardrail ended a stream. `code`: `content_filtered` or `guardrail_unavailable`; `message`: safe
    to show the client (it names the kinds of findings, never what was found)."""

    code: Literal["content_filtered", "guardrail_unavailable"]
    message: str

    @classmethod
    def filtered(cls, findings: dict[str, int]) -> GuardrailBlock:
        kinds = ", ".join(sorted(findings)) or "unspecified"
        return cls("content_filtered", f"The response was stopped by the content guardrail ({kinds}).")

    @classmethod
    def unavailable(cls) -> GuardrailBlock:
        return cls("guardrail_unavailable", "The response was stopped: the content guardrail could not be reached.")


class OutputGuardrail:
    """The guardrail stage of one stream (see the module docstring). `blocked` and `intervened` are set together,
    at the first blocked window (or, failing closed, the first failed call); from then on every `feed` and `finish`
    returns "". `action`: the strongest action seen (None before any answer); `findings`: kinds counted over every
    window; `failures`: calls that failed; `assessed`: calls answered."""

    def __init__(self, client: GuardrailClient, config: GuardrailConfig) -> None:
        self._client = client
        self._config = config
        self._rule = WindowRule.for_size(config.window_chars)
        self._buffers: dict[Hashable, str] = {}
        self._queue: MemoryObjectSendStream[str] | None = None
        self.blocked: GuardrailBlock | None = None
        self.intervened = anyio.Event()
        self._assessor_ended = anyio.Event()
        self.action: Action | None = None
        self.findings: Counter[str] = Counter()
        self.failures = 0
        self.assessed = 0

    @property
    def asynchronous(self) -> bool:
        return self._config.mode == "async"

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Async mode: start the background assessor in `tg` (it runs until `close`, a block, or `tg` is
        cancelled). Sync mode: nothing to start."""
        if not self.asynchronous:
            return
        if self._queue is not None:
            raise RuntimeError("the guardrail stage is already started")
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        self._queue = send
        tg.start_soon(self._assessor, receive)

    def close(self) -> None:
        """No more text: the async assessor judges what is queued, then ends (cancel its task group instead to
        drop it). Sync mode: nothing to do."""
        if self._queue is not None:
            self._queue.close()

    async def judged(self) -> None:
        """Async mode, after `close`: returns once the assessor ended, every queued window judged (or dropped by a
        block). The stream's end waits for it, so that a block or a failure in its last windows still ends it, and
        their findings are counted; the caller bounds the wait. Sync mode (or never started): at once."""
        if self._queue is not None:
            await self._assessor_ended.wait()

    async def feed(self, channel: Hashable, text: str) -> str:
        """Add a channel's text; returns what may be released now (sync: the judged windows; async: `text`)."""
        if self.blocked:
            return ""
        windows = self._take(channel, text, final=False)
        if self.asynchronous:
            self._enqueue(windows)
            return text
        return await self._release(windows)

    async def finish(self, channel: Hashable) -> str:
        """The channel ended: its held rest, judged (sync). Async mode: the rest is queued and "" returned, since
        `feed` released it already."""
        if self.blocked:
            return ""
        windows = self._take(channel, "", final=True)
        if self.asynchronous:
            self._enqueue(windows)
            return ""
        return await self._release(windows)

    def _take(self, channel: Hashable, text: str, *, final: bool) -> list[str]:
        windows, rest = split_windows(self._buffers.pop(channel, "") + text, self._rule, final=final)
        if rest:
            self._buffers[channel] = rest
        return windows

    async def _release(self, windows: list[str]) -> str:
        released: list[str] = []
        for window in windows:
            judged = await self._judge(window)
            if judged is None or self.blocked:
                return ""
            released.append(judged)
        return "".join(released)

    def _enqueue(self, windows: list[str]) -> None:
        if self._queue is None:
            raise RuntimeError("async mode: start() the guardrail stage before feeding it")
        for window in windows:
            if needs_assessment(window):
                try:
                    self._queue.send_nowait(window)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the assessor ended (a block, or its task group cancelled): nobody judges any more

    async def _assessor(self, windows: MemoryObjectReceiveStream[str]) -> None:
        limiter = anyio.CapacityLimiter(ASYNC_CALLS)
        try:
            async with windows, anyio.create_task_group() as tg:
                async for window in windows:
                    tg.start_soon(self._judge_behind, window, limiter, tg.cancel_scope)
        finally:
            self.close()  # ended by a block or a cancel: later text is not queued for nobody
            self._assessor_ended.set()

    async def _judge_behind(self, window: str, limiter: anyio.CapacityLimiter, scope: anyio.CancelScope) -> None:
        async with limiter:
            if not self.blocked:
                await self._judge(window)
        if self.blocked:
            scope.cancel()  # the stream ends: the other windows' calls are moot

    async def _judge(self, window: str) -> str | None:
        """The window as it may be released, or None when it must not be (blocked, or failing closed)."""
        if not needs_assessment(window):
            return window
        try:
            assessment = await self._client.assess(window, "OUTPUT")
        except GuardrailUnavailable as exc:
            return self._failed(exc, window)
        self.assessed += 1
        self.action = stronger(self.action or "NONE", assessment.action)
        self.findings.update(assessment.findings)
        if assessment.action == "BLOCKED":
            logger.info("guardrail blocked the output", extra={"guardrail_findings": assessment.findings})
            self._block(GuardrailBlock.filtered(assessment.findings))
            return None
        return assessment.text

    def _failed(self, exc: GuardrailUnavailable, window: str) -> str | None:
        self.failures += 1
        fail_open = self._config.on_error == "fail_open"
        logger.warning(
            "guardrail unavailable: output %s",
            "released unassessed (fail_open)" if fail_open else "stopped (fail_closed)",
            extra={"guardrail_error": exc.reason, "guardrail_failures": self.failures},
        )
        if fail_open:
            return window
        self._block(GuardrailBlock.unavailable())
        return None

    def _block(self, block: GuardrailBlock) -> None:
        if self.blocked is None:
            self.blocked = block
            self.intervened.set()


class Guardrail:
    """The deployment's guardrail as the pipeline uses it: one client, a stage per stream, the prompt's judgement
    under the failure policy."""

    def __init__(self, config: GuardrailConfig, client: Any | None = None) -> None:
        self.config = config
        self.client = GuardrailClient(config, client)

    def output_stage(self) -> OutputGuardrail:
        return OutputGuardrail(self.client, self.config)

    async def judge_prompt(self, texts: list[str]) -> Assessment | None:
        """The prompt's judgement; None when the guardrail failed and the policy is `fail_open` (logged, never the
        text). Failing closed, `GuardrailUnavailable` is raised: the request is answered 503 and costs nothing."""
        try:
            return await assess_prompt(self.client, texts)
        except GuardrailUnavailable as exc:
            if self.config.on_error != "fail_open":
                raise
            logger.warning(
                "guardrail unavailable: prompt sent unassessed (fail_open)", extra={"guardrail_error": exc.reason}
            )
            return None

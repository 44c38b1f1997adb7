"""Stream metering (pure): TTFT, TPOT, chunks, usage and finish_reason from parsed upstream chunks.

Times are passed in by the caller (monotonic seconds), so the arithmetic is testable without clocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    estimated: bool = False
    lower_bound: bool = False  # the upstream may have generated more than was counted (stopped at the deadline)

    @property
    def source(self) -> str:
        """How the record counts its tokens: "upstream" (reported), "estimated", or "lower_bound"."""
        return "lower_bound" if self.lower_bound else ("estimated" if self.estimated else "upstream")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_openai(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens:
            body["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return body


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Rough prompt size when the upstream never reports usage: ~4 characters a token, plus framing."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return max(1, chars // 4 + 3 * len(messages))


_TOKEN_FIELDS = ("content", "tool_calls", "refusal", "function_call", "reasoning_content")
CHARS_PER_TOKEN = 4
_PLAIN_DELTA = frozenset({"role", "content"})  # a delta of text alone (most of a stream's)


def delta_tokens(delta: dict[str, Any]) -> int:
    """Completion tokens a delta carries when the upstream does not count them: none without content, a tool
    call, a refusal or reasoning; else a token per four ASCII characters and one per other character (CJK text
    is about a token a character), at least one. A long Bedrock delta or an Ollama tool call arriving whole
    counts as the text it carries, not as one token."""
    content = delta.get("content")
    if type(content) is str and _PLAIN_DELTA.issuperset(delta):  # the common delta, counted without the walk below
        in_ascii = len(content.encode("ascii", "ignore"))
        return max(1, in_ascii // CHARS_PER_TOKEN + len(content) - in_ascii) if content else 0
    if not any(delta.get(name) for name in _TOKEN_FIELDS):
        return 0
    ascii_chars = other = 0
    for text in _texts(delta):
        in_ascii = len(text.encode("ascii", "ignore"))
        ascii_chars += in_ascii
        other += len(text) - in_ascii
    return max(1, ascii_chars // CHARS_PER_TOKEN + other)


def _texts(delta: dict[str, Any]) -> list[str]:
    """The generated text in a delta: its text fields, and its tool calls' names and arguments."""
    texts = [value for name in _TOKEN_FIELDS if isinstance(value := delta.get(name), str)]
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts += [value for value in function.values() if isinstance(value, str)]
    return texts


@dataclass(slots=True)
class StreamMeter:
    """Accumulates what one stream produced. Feed every parsed upstream chunk with its arrival time."""

    started_at: float
    first_token_at: float | None = None
    last_token_at: float | None = None
    chunks: int = 0
    content_chunks: int = 0
    estimated_tokens: int = 0  # completion tokens by `delta_tokens`: the count when the upstream gives none
    finish_reason: str | None = None
    upstream_usage: Usage | None = None
    _prompt_reported: bool = field(default=True, repr=False)  # whether the upstream's usage counted the prompt
    _finished_choices: set[Any] = field(default_factory=set, repr=False)

    def observe(self, chunk: dict[str, Any], now: float) -> bool:
        """Record one chunk. Returns False when the chunk is a duplicate terminal chunk (a second
        finish_reason or a second usage report) that must not reach the client."""
        choices = chunk.get("choices") or []
        usage = chunk.get("usage")
        if usage and self.upstream_usage is not None and not choices:
            return False
        if choices and self._finished_choices and all(self._repeats_finish(choice) for choice in choices):
            return False
        self.chunks += 1
        if usage:
            self.upstream_usage = _parse_usage(usage)
            self._prompt_reported = isinstance(usage, dict) and _is_count(usage.get("prompt_tokens"))
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            tokens = delta_tokens(delta) if isinstance(delta, dict) else 0
            if tokens:
                self.content_chunks += 1
                self.estimated_tokens += tokens
                if self.first_token_at is None:
                    self.first_token_at = now
                self.last_token_at = now
            finish = choice.get("finish_reason")
            if finish:
                self.finish_reason = finish
                self._finished_choices.add(choice.get("index", 0))
        return True

    def _repeats_finish(self, choice: Any) -> bool:
        """A content-less finish chunk for a choice that already finished: a resent terminal chunk."""
        return (
            isinstance(choice, dict)
            and bool(choice.get("finish_reason"))
            and not choice.get("delta")
            and choice.get("index", 0) in self._finished_choices
        )

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started_at

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (None with fewer than two tokens)."""
        if self.first_token_at is None or self.last_token_at is None:
            return None
        tokens = self.completion_tokens - 1
        if tokens < 1:
            return None
        return (self.last_token_at - self.first_token_at) / tokens

    @property
    def completion_tokens(self) -> int:
        if self.upstream_usage is not None:
            return self.upstream_usage.completion_tokens
        return self.estimated_tokens

    def usage(self, prompt_estimate: int) -> Usage:
        """Upstream-reported usage when it arrived, else an estimate (`delta_tokens`). A count the upstream left
        out of its usage (an NDJSON server that reports its output only) is estimated like any missing count, and
        the usage marked estimated: never billed as 0. `prompt_estimate`: the prompt's `estimate_prompt_tokens`."""
        reported = self.upstream_usage
        if reported is None:
            return Usage(prompt_estimate, self.estimated_tokens, estimated=True)
        if not self._prompt_reported:
            return replace(reported, prompt_tokens=prompt_estimate, estimated=True)
        return reported


def _parse_usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage(0, 0)
    details = raw.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    return Usage(
        prompt_tokens=_as_int(raw.get("prompt_tokens")),
        completion_tokens=_as_int(raw.get("completion_tokens")),
        cached_tokens=_as_int(cached),
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _as_int(value: Any) -> int:
    return value if _is_count(value) else 0

"""NDJSON upstreams (pure, no I/O): servers that stream one JSON object per line.

Two kinds. `ollama`: Ollama's native `/api/chat` (`{"message": {"content"}, "done": false}` lines, then a final
`done: true` line with `done_reason` and its token counts); the request is translated (`ollama_request`).
`ndjson`: a server that takes the OpenAI request as it is and streams lines whose fields sit at configured dotted
paths; the defaults read this project's own NDJSON endpoint (chunk lines, then a `relay.summary` line), so one
relay can be another's upstream.

Both decoders hold the finish reason back until the final line: it is the upstream's end marker, and a stream cut
before it must end `incomplete` rather than look finished. A line that is not a JSON object, or an error line,
ends the stream as an upstream error; so does a line past the 1 MiB cap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..errors import InvalidRequest
from ..json_text import dumps
from ..termination import TerminationReason
from .base import END, Decoded, Failed, KeyProvider, UpstreamRequest, chunk, http_headers, usage_chunk
from .ndjson_lines import MAX_LINE_BYTES, LineSplitter
from .ollama_request import ollama_body

__all__ = [
    "DEFAULT_FIELDS",
    "MALFORMED",
    "FieldPaths",
    "NDJSONDecoder",
    "NDJSONDialect",
    "OllamaDecoder",
    "OllamaDialect",
]

MALFORMED: Final = "Upstream sent a malformed line."
NDJSON: Final = "application/x-ndjson"
TOO_LONG: Final = f"Upstream sent a line longer than {MAX_LINE_BYTES} bytes."
_ERROR_CHARS = 1000  # an upstream's error message reaches the client: bounded
_OLLAMA_FINISH = {"stop": "stop", "length": "length"}
# A final line's `done` value that says the stream did not finish: this relay's own termination reasons of that
# kind, as another relay's summary line carries them (its upstream failed, it was cancelled, it ran out of time).
UNFINISHED: Final = frozenset(reason.value for reason in TerminationReason if reason.is_unfinished)
# "load" and anything else: the model did stop

DEFAULT_FIELDS: Final[Mapping[str, str]] = {
    "content": "choices.0.delta.content",
    "reasoning": "choices.0.delta.reasoning_content",
    "tool_calls": "choices.0.delta.tool_calls",
    "finish_reason": "choices.0.finish_reason",
    "done": "termination_reason",
    "prompt_tokens": "usage.prompt_tokens",
    "completion_tokens": "usage.completion_tokens",
    "error": "error.message",
}
"""Where the generic decoder finds each field: this project's own NDJSON output (`encoding.NDJSONFraming`)."""


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _error_text(error: Any) -> str:
    if isinstance(error, dict) and "message" in error:
        error = error["message"]
    text = error if isinstance(error, str) else dumps(error)
    return f"Upstream error: {text[:_ERROR_CHARS]}"


class _LineDecoder:
    """What both decoders share: lines out of the splitter, JSON objects out of lines, chunks in the relay's
    shape, and silence after the stream's last word (an END or a Failed)."""

    def __init__(self, model: str, created: int) -> None:
        self._model = model
        self._created = created
        self._lines = LineSplitter()
        self._over = False
        self._started = False  # the first delta carries the assistant role

    def feed(self, raw: bytes) -> list[Decoded]:
        return self._decode(self._lines.feed(raw))

    def close(self) -> list[Decoded]:
        return self._decode(self._lines.close())

    def _decode(self, lines: list[str]) -> list[Decoded]:
        out: list[Decoded] = []
        for text in lines:
            if self._over:
                break
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                obj = None
            items = self._checked_line(obj) if isinstance(obj, dict) else [Failed(MALFORMED)]
            out += items
            self._over = any(not isinstance(item, dict) for item in items)  # END or Failed: the last word
        if self._lines.overflowed and not self._over:
            self._over = True
            out.append(Failed(TOO_LONG))
        return out

    def _checked_line(self, obj: dict[str, Any]) -> list[Decoded]:
        try:
            return self._line(obj)
        except (TypeError, AttributeError, ValueError):  # a field of an unexpected type: not a line we can read
            return [Failed(MALFORMED)]

    def _line(self, obj: dict[str, Any]) -> list[Decoded]:
        raise NotImplementedError

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if delta and not self._started:
            self._started = True
            delta = {"role": "assistant", **delta}
        return chunk(self._model, self._created, delta, finish_reason)

    def _end(self, finish_reason: str, prompt: int | None, completion: int | None) -> list[Decoded]:
        """The final line: the finish chunk, the upstream's counts when it gave them, and the end marker."""
        return [self._chunk({}, finish_reason), *self._usage(prompt, completion), END]

    def _usage(self, prompt: int | None, completion: int | None) -> list[Decoded]:
        """The usage chunk of the upstream's counts; none without the output count (the relay estimates then,
        never billing the output as 0). Without the prompt count it carries the output count alone: the meter
        estimates the prompt (and marks the usage estimated) rather than bill it as 0."""
        if completion is None:
            return []
        usage = usage_chunk(self._model, self._created, prompt or 0, completion)
        if prompt is None:
            usage["usage"] = {"completion_tokens": completion}
        return [usage]


class OllamaDecoder(_LineDecoder):
    """Ollama's `/api/chat` lines into chunks. Tool calls arrive whole (arguments as an object), each in one line;
    they get the OpenAI index and an id (`call_<n>` when Ollama gives none)."""

    def __init__(self, model: str, created: int) -> None:
        super().__init__(model, created)
        self._tool_calls = 0

    def _line(self, obj: dict[str, Any]) -> list[Decoded]:
        if obj.get("error") is not None:
            return [Failed(_error_text(obj["error"]))]
        message = obj.get("message", {})
        if not isinstance(message, dict):
            return [Failed(MALFORMED)]
        delta: dict[str, Any] = {}
        if isinstance(message.get("thinking"), str) and message["thinking"]:
            delta["reasoning_content"] = message["thinking"]
        content = message.get("content")
        if isinstance(content, str) and (content or not (self._started or obj.get("done"))):
            delta["content"] = content
        if message.get("tool_calls"):
            calls = self._calls(message["tool_calls"])
            if calls is None:
                return [Failed(MALFORMED)]
            delta["tool_calls"] = calls
        out: list[Decoded] = [self._chunk(delta)] if delta else []
        if obj.get("done") is True:
            finish = "tool_calls" if self._tool_calls else _OLLAMA_FINISH.get(str(obj.get("done_reason")), "stop")
            completion = _count(obj.get("eval_count"))  # without it there are no counts to report
            prompt = (_count(obj.get("prompt_eval_count")) or 0) if completion is not None else None
            out += self._end(finish, prompt, completion)
        return out

    def _calls(self, calls: Any) -> list[dict[str, Any]] | None:
        if not isinstance(calls, list):
            return None
        out = []
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                return None
            arguments = function.get("arguments", {})
            call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else f"call_{self._tool_calls}"
            out.append(
                {
                    "index": self._tool_calls,
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": function["name"],
                        "arguments": arguments if isinstance(arguments, str) else dumps(arguments),
                    },
                }
            )
            self._tool_calls += 1
        return out


@dataclass(frozen=True, slots=True)
class FieldPaths:
    """The generic decoder's field paths, parsed once: each a tuple of keys (digits index lists)."""

    paths: Mapping[str, tuple[str, ...]]

    @classmethod
    def parse(cls, fields: Mapping[str, str] | None = None) -> FieldPaths:
        """`DEFAULT_FIELDS` overridden by `fields`; a ValueError names an unknown key or an empty path (a
        configuration the relay refuses to start with, rather than stream answers it cannot read)."""
        merged = dict(DEFAULT_FIELDS)
        for key, path in (fields or {}).items():
            if key not in DEFAULT_FIELDS:
                raise ValueError(f"Unknown NDJSON field {key!r}; the fields are: {', '.join(DEFAULT_FIELDS)}.")
            if not isinstance(path, str) or not path or not all(path.split(".")):
                raise ValueError(f"The NDJSON field {key!r} needs a dotted path such as 'usage.prompt_tokens'.")
            merged[key] = path
        return cls({key: tuple(path.split(".")) for key, path in merged.items()})

    def get(self, obj: Any, key: str) -> Any:
        """The value at the field's path, or None when any step is missing."""
        for step in self.paths[key]:
            if isinstance(obj, dict):
                obj = obj.get(step)
            elif isinstance(obj, list) and step.isdigit() and int(step) < len(obj):
                obj = obj[int(step)]
            else:
                return None
        return obj


class NDJSONDecoder(_LineDecoder):
    """Lines with fields at configured paths into chunks. Counts and the finish reason may come on any line (this
    project's stream has a usage chunk and then a summary); they are emitted with the final line, the one whose
    `done` field is truthy. A final line with no finish reason seen means the server did finish: `stop`."""

    def __init__(self, model: str, created: int, fields: FieldPaths | None = None) -> None:
        super().__init__(model, created)
        self._fields = fields or FieldPaths.parse()
        self._finish: str | None = None
        self._prompt: int | None = None
        self._completion: int | None = None

    def _line(self, obj: dict[str, Any]) -> list[Decoded]:
        get = self._fields.get
        error = get(obj, "error")
        if error is not None:
            return [Failed(_error_text(error))]
        delta: dict[str, Any] = {}
        reasoning = get(obj, "reasoning")
        if isinstance(reasoning, str) and reasoning:
            delta["reasoning_content"] = reasoning
        content = get(obj, "content")
        if isinstance(content, str) and (content or not self._started):
            delta["content"] = content
        tool_calls = get(obj, "tool_calls")
        if isinstance(tool_calls, list) and tool_calls:
            delta["tool_calls"] = tool_calls
        out: list[Decoded] = [self._chunk(delta)] if delta else []
        finish = get(obj, "finish_reason")
        self._finish = finish if isinstance(finish, str) and finish else self._finish
        self._prompt = _pick(_count(get(obj, "prompt_tokens")), self._prompt)
        self._completion = _pick(_count(get(obj, "completion_tokens")), self._completion)
        done = get(obj, "done")
        if isinstance(done, str) and done in UNFINISHED:  # another relay's summary of a stream that did not finish
            # what it counted (and its upstream billed) stands, then the failure
            failed = Failed(f"Upstream stream ended without finishing ({done}).")
            return [*out, *self._usage(self._prompt, self._completion), failed]
        if done:
            out += self._end(self._finish or "stop", self._prompt, self._completion)
        return out


def _pick(new: int | None, old: int | None) -> int | None:
    return old if new is None else new


class OllamaDialect:
    """Ollama's native chat API; `url` is the server root (`http://127.0.0.1:11434`)."""

    kind = "ollama"

    def __init__(self, url: str, key: KeyProvider | None = None) -> None:
        self.url = url.rstrip("/")
        self._key = key

    async def request(self, body: dict[str, Any], model: str, request_id: str) -> UpstreamRequest:
        content = dumps(ollama_body(body, model)).encode()
        return UpstreamRequest(f"{self.url}/api/chat", await http_headers(self._key, request_id, NDJSON), content)

    def decoder(self, model: str, created: int) -> OllamaDecoder:
        return OllamaDecoder(model, created)


class NDJSONDialect:
    """A server that takes the OpenAI request as it is (unknown fields pass through, as with the `openai` kind)
    and streams NDJSON; `url` is the full endpoint (another relay's `http://host/api/v1/chat/stream`). `fields`
    overrides `DEFAULT_FIELDS`; a bad one raises ValueError here, at configuration time."""

    kind = "ndjson"

    def __init__(self, url: str, key: KeyProvider | None = None, fields: Mapping[str, str] | None = None) -> None:
        self.url = url
        self._key = key
        self.fields = FieldPaths.parse(fields)

    async def request(self, body: dict[str, Any], model: str, request_id: str) -> UpstreamRequest:
        _check_one_plain_choice(body)
        content = dumps({**body, "model": model}).encode()
        return UpstreamRequest(self.url, await http_headers(self._key, request_id, NDJSON), content)

    def decoder(self, model: str, created: int) -> NDJSONDecoder:
        return NDJSONDecoder(model, created, self.fields)


def _check_one_plain_choice(body: dict[str, Any]) -> None:
    """The fields read from each line describe one choice's text: more choices, or log probabilities, would be
    dropped silently, so they are refused (400, naming the field)."""
    if body.get("n", 1) != 1:
        raise InvalidRequest("'n' other than 1 is not supported by the NDJSON upstream.", param="n")
    for name in ("logprobs", "top_logprobs"):
        if body.get(name):
            raise InvalidRequest(f"'{name}' is not supported by the NDJSON upstream.", param=name)

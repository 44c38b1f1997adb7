"""The `openai` kind for the Responses API: the client's Responses request goes to the provider's `/responses` as
it was sent, and the provider's events come back as they are, to be relayed under the relay's ids.

The relay still meters, guards budgets and names termination reasons from chat chunks, so the decoder turns each
provider event into one chat chunk (text, refusal and reasoning deltas, tool-call deltas, the finish) that also
carries the event itself in `RAW_EVENTS` (`chunk["_events"] = [event]`): the Responses framing writes those events
instead of building its own. An event the chat chunks have no place for (`response.created`, `*.done`,
`content_part.*`, one of a type added after this was written) is a chunk without choices that carries it, so it is
relayed in its place.

How a stream ends: `response.completed` or `response.incomplete` is the finish chunk (carrying the event), the
usage chunk of the provider's counts, then `END`. `response.failed` and `error` are `Failed` with the provider's
message, after a usage chunk when the failed response counted tokens; their events are not relayed: the relay
writes its own failure events.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, TypeGuard

from ..sse import SSELineTooLong, SSEParser
from .base import END, Decoded, Failed, KeyProvider, UpstreamRequest, chunk, http_headers, usage_chunk
from .openai import MALFORMED
from .sequence import EventSequence

__all__ = ["RAW_EVENTS", "OpenAIResponsesDialect", "ResponsesEventDecoder"]

RAW_EVENTS: Final = "_events"
"""The chunk key holding the provider events the chunk stands for (a list of event objects, in order)."""

_TYPE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")  # written as the SSE `event:` line: nothing that could break it
_DELTAS = {
    "response.output_text.delta": "content",
    "response.refusal.delta": "refusal",
    "response.reasoning_text.delta": "reasoning_content",
    "response.reasoning_summary_text.delta": "reasoning_content",
}
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def _sendable(items: list[Any]) -> list[Any]:
    """Input items as the provider can take them with nothing stored: the relay's own item ids (what the client was
    given) name nothing there, and reasoning items without them cannot be resolved: both are left out. A call's
    `call_id` is kept: it pairs the call with its output."""
    sendable = []
    for item in items:
        if isinstance(item, dict):
            if item.get("type") == "reasoning":
                continue
            item = {key: value for key, value in item.items() if key != "id"}
        sendable.append(item)
    return sendable


class OpenAIResponsesDialect:
    """An OpenAI Responses endpoint (`{base}/responses`), streamed, storing nothing at the provider."""

    kind = "openai"

    def __init__(self, base_url: str, key: KeyProvider | None = None) -> None:
        self._url = base_url.rstrip("/") + "/responses"
        self._key = key

    async def request(self, body: dict[str, Any], model: str, request_id: str) -> UpstreamRequest:
        """`body`: the client's validated Responses request, sent as it is but for the route's model, `stream`
        (the relay always streams from the provider) and `store: false` (the relay keeps no responses, and the
        client was told so); `metadata` is the relay's spend attribution, kept on its record, not sent."""
        headers = await http_headers(self._key, request_id, "text/event-stream")
        payload = {**body, "model": model, "stream": True, "store": False}
        payload.pop("metadata", None)
        if isinstance(payload.get("input"), list):
            payload["input"] = _sendable(payload["input"])
        return UpstreamRequest(self._url, headers, json.dumps(payload, separators=(",", ":")).encode())

    def decoder(self, model: str, created: int) -> ResponsesEventDecoder:
        return ResponsesEventDecoder(model, created)


class ResponsesEventDecoder:
    """SSE Responses events → chat chunks carrying them (see the module docstring). Pure and stateful: a tool
    call's chat index is its order among the function calls, found again from its item id or output index."""

    __slots__ = ("_any_call", "_calls", "_created", "_done", "_model", "_parser", "_sequence")

    def __init__(self, model: str, created: int) -> None:
        self._model, self._created = model, created
        self._parser = SSEParser()
        self._sequence = EventSequence()  # the provider's `sequence_number`s: a resent event is dropped
        self._calls: dict[Any, int] = {}  # ("id", item id) and ("at", output index) → tool-call index
        self._any_call = False
        self._done = False

    def feed(self, raw: bytes) -> list[Decoded]:
        if self._done:
            return []
        try:
            events = self._parser.feed(raw)
        except SSELineTooLong:
            self._done = True
            return [Failed("Upstream sent a malformed event (line too long).")]
        out: list[Decoded] = []
        for event in events:
            items = self._decode(event.data)
            out.extend(items)
            if items and not isinstance(items[-1], dict):
                self._done = True
                break
        return out

    def close(self) -> list[Decoded]:
        self._parser.flush()  # an event without its blank line is not dispatched (the SSE rules)
        return []

    @property
    def repeats(self) -> int:
        """Events dropped because the provider sent them again (a sequence number that repeats or goes back)."""
        return self._sequence.repeats

    def _decode(self, data: str) -> list[Decoded]:
        if data == "[DONE]":  # not the Responses API's, but some compatible servers send it: the body ends anyway
            return []
        try:
            event = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
            return [Failed(MALFORMED)]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not _TYPE.fullmatch(event["type"]):
            return [Failed(MALFORMED)]
        number = event.get("sequence_number")
        if not self._sequence.admit(number if isinstance(number, int) and not isinstance(number, bool) else None):
            return []
        kind = event["type"]
        if kind in ("response.completed", "response.incomplete"):
            return self._finish(event)
        if kind in ("response.failed", "error"):
            return _failure(event, self._model, self._created)
        return [self._carry(event, self._delta(kind, event))]

    def _delta(self, kind: str, event: dict[str, Any]) -> dict[str, Any] | None:
        """The chat delta an event stands for (None: it has none)."""
        if kind in _DELTAS:
            text = event.get("delta")
            return {_DELTAS[kind]: text} if isinstance(text, str) and text else None
        if kind == "response.function_call_arguments.delta":
            text = event.get("delta")
            if not isinstance(text, str) or not text:
                return None
            index = self._call_index(event.get("item_id"), event.get("output_index"))
            return {"tool_calls": [{"index": index, "function": {"arguments": text}}]}
        item = event.get("item")
        if kind == "response.output_item.added" and isinstance(item, dict) and item.get("type") == "function_call":
            return {"tool_calls": [self._call_opened(item, event.get("output_index"))]}
        return None

    def _call_opened(self, item: dict[str, Any], output_index: Any) -> dict[str, Any]:
        """A function call's first tool-call delta: its id and name, its arguments to follow."""
        index = self._call_index(item.get("id"), output_index)
        call_id, name = item.get("call_id"), item.get("name")
        return {
            "index": index,
            "id": call_id if isinstance(call_id, str) else "",
            "type": "function",
            "function": {"name": name if isinstance(name, str) else "", "arguments": ""},
        }

    def _call_index(self, item_id: Any, output_index: Any) -> int:
        """The chat index of the call with this item id or output index: a new one for a call not seen before."""
        keys = [key for key in (("id", item_id), ("at", output_index)) if isinstance(key[1], str | int)]
        for key in keys:
            if key in self._calls:
                return self._calls[key]
        index = len(set(self._calls.values()))
        self._calls.update(dict.fromkeys(keys, index))
        self._any_call = True
        return index

    def _finish(self, event: dict[str, Any]) -> list[Decoded]:
        response = _object(event.get("response"))
        if event["type"] == "response.completed":
            output = response.get("output")
            called = self._any_call or any(
                isinstance(item, dict) and item.get("type") == "function_call"
                for item in (output if isinstance(output, list) else ())
            )
            finish = "tool_calls" if called else "stop"
        else:
            finish = _INCOMPLETE.get(str(_object(response.get("incomplete_details")).get("reason")), "length")
        finished = chunk(self._model, self._created, {}, finish)
        finished[RAW_EVENTS] = [event]
        usage = _usage(response.get("usage"), self._model, self._created)
        return [finished, *usage, END]

    def _carry(self, event: dict[str, Any], delta: dict[str, Any] | None) -> dict[str, Any]:
        carried = chunk(self._model, self._created, delta) if delta else _no_choice(self._model, self._created)
        carried[RAW_EVENTS] = [event]
        return carried


def _failure(event: dict[str, Any], model: str, created: int) -> list[Decoded]:
    """The provider's failure, with its message (the provider's own words, no secrets of the relay's)."""
    if event["type"] == "response.failed":
        response = _object(event.get("response"))
        message = _object(response.get("error")).get("message")
        usage = _usage(response.get("usage"), model, created)
    else:
        message = event.get("message") or _object(event.get("error")).get("message")
        usage = []
    text = message if isinstance(message, str) and message else "unknown"
    return [*usage, Failed(f"Upstream error: {text}")]


def _usage(raw: Any, model: str, created: int) -> list[Decoded]:
    """The usage chunk of a response's counts: none without an output count (the relay estimates), and without
    `prompt_tokens` when the input was not counted (the relay estimates that, never bills it as 0)."""
    usage = _object(raw)
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    if not _is_count(completion):
        return []
    cached = _object(usage.get("input_tokens_details")).get("cached_tokens")
    counted = usage_chunk(
        model, created, prompt if _is_count(prompt) else 0, completion, cached if _is_count(cached) else 0
    )
    if not _is_count(prompt):
        del counted["usage"]["prompt_tokens"]
    return [counted]


def _no_choice(model: str, created: int) -> dict[str, Any]:
    return {"id": "", "object": "chat.completion.chunk", "created": created, "model": model, "choices": []}


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}

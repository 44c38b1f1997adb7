"""OpenAI Responses API answers, rendered from the relay's chat chunks (pure): the streamed events, the
`stream: false` body and the HTTP error.

A chat delta becomes output items, one open at a time, in the order the model produced them: reasoning
(`reasoning_content`) a `reasoning` item with a `reasoning_text` part (raw reasoning, not a summary: the API's form
for models that show their reasoning), text and refusals the parts of a `message` item, each tool call a
`function_call` item. An item is closed (its `.done` events, then `response.output_item.done`) when the next one
starts or the stream ends; the terminal event then carries every item in its final form, which is what the SDK's
stream accumulator (`responses.stream(...).get_final_response()`) returns.

How a stream ends:
- `response.completed` (finish `stop` or `tool_calls`);
- `response.incomplete`: `incomplete_details.reason` `max_output_tokens` (finish `length`) or `content_filter`; a
  stream the client cancelled is `incomplete` with status `cancelled` (the API has no event of its own for it);
- a failure: `response.failed` (status `failed`, `error` with the relay's code and message, the output so far),
  then the API's `error` event. That event has the documented flat fields (`code`, `message`, `param`) and the
  relay's error object nested under `error`, as OpenAI's live API sends it: the Python SDK raises `openai.APIError`
  (its `code` the relay's) on it, so a client reading the stream cannot miss the failure.
The relay's codes (`budget_exceeded`, `content_filtered`, `upstream_timeout`...) are kept in `response.error.code`
although OpenAI's schema lists its own: the SDKs read the field leniently, and the code is what a client acts on.

Pass-through: a chunk that carries a provider's own Responses events (`RAW_EVENTS`, from the `openai` kind's
Responses decoder) is rendered as those events, rewritten to the relay's ids and numbering (`responses_passthrough`),
and from then on the stream is the provider's: a chunk without events adds nothing. The provider's
`response.completed`/`response.incomplete` ends it (`end()` then writes nothing); when the relay ends it first, the
open items are closed and the terminal events written as above, with the output the provider's events built.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from ..json_text import dumps
from ..upstreams.openai_responses import RAW_EVENTS
from .responses_passthrough import PassThrough

__all__ = ["ResponsesFraming", "responses_answer", "responses_error", "responses_usage"]


@dataclass(frozen=True)
class _PartKind:
    item: str  # the type of the item the part lives in
    delta: str  # the event of a piece of it
    done: str  # the event of the whole of it
    key: str  # the part's text field
    extra: dict[str, Any] = field(default_factory=dict)  # more fields of its delta and done events


_PARTS = {
    "output_text": _PartKind(
        "message", "response.output_text.delta", "response.output_text.done", "text", {"logprobs": []}
    ),
    "refusal": _PartKind("message", "response.refusal.delta", "response.refusal.done", "refusal"),
    "reasoning_text": _PartKind("reasoning", "response.reasoning_text.delta", "response.reasoning_text.done", "text"),
}
_DELTA_KEYS = (("reasoning_content", "reasoning_text"), ("content", "output_text"), ("refusal", "refusal"))
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Output:
    """One response as it is built from chat deltas: its items, the item and part that are open, and (when
    `wire`) the SSE events that built it."""

    def __init__(self, response_id: str, model: str, created: int, *, wire: bool) -> None:
        self.response_id, self.model, self.created = response_id, model, created
        self.items: list[dict[str, Any]] = []
        self.wire: list[str] | None = [] if wire else None
        self._stem = _id_stem(response_id)
        self._sequence = 0
        self._open: int | None = None  # output index of the open item
        self._part: int | None = None  # content index of its open part
        self._tool: int | None = None  # chat tool-call index of the open function call
        self._closed_tools: set[int] = set()

    def emit(self, kind: str, **fields: Any) -> None:
        """One event, serialized at once: the items it shows keep changing after it is sent."""
        self.emit_event({"type": kind, **fields})

    def emit_event(self, event: dict[str, Any]) -> None:
        """An event object (its `type` a name safe on the `event:` line), numbered and serialized at once."""
        if self.wire is not None:
            event = {**event, "sequence_number": self._sequence}
            self.wire.append(f"event: {event['type']}\ndata: {dumps(event)}\n\n")
        self._sequence += 1

    def response(self, status: str, **fields: Any) -> dict[str, Any]:
        """The Response object: what the SDK's `Response` type requires, the relay's own output and usage. The
        request's echo (tools, tool_choice...) is the API's defaults: the renderer is not given the request."""
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "model": self.model,
            "output": self.items,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "tool_choice": "auto",
            "tools": [],
            "usage": None,
            **fields,
        }

    def delta(self, delta: dict[str, Any]) -> None:
        for key, kind in _DELTA_KEYS:
            text = delta.get(key)
            if isinstance(text, str) and text:
                self._text(kind, text)
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                self._tool_call(call)

    def close(self, status: str) -> None:
        """Close the open item (and its open part) with `status`."""
        if self._open is None:
            return
        index, item = self._open, self.items[self._open]
        self._close_part()
        if item["type"] == "function_call":
            self.emit(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
            if self._tool is not None:
                self._closed_tools.add(self._tool)
            self._tool = None
        item["status"] = status
        self.emit("response.output_item.done", output_index=index, item=item)
        self._open = None

    def _text(self, kind: str, text: str) -> None:
        spec = _PARTS[kind]
        index = self._open
        if index is None or self.items[index]["type"] != spec.item:
            index = self._start_item(self._new_text_item(spec.item))
        item = self.items[index]
        if self._part is None or item["content"][self._part]["type"] != kind:
            self._close_part()
            item["content"].append(_blank_part(kind))
            self._part = len(item["content"]) - 1
            self._emit_part("response.content_part.added", item, index)
        item["content"][self._part][spec.key] += text
        self.emit(
            spec.delta, item_id=item["id"], output_index=index, content_index=self._part, delta=text, **spec.extra
        )

    def _tool_call(self, call: dict[str, Any]) -> None:
        position = call.get("index", 0)
        function = _object(call.get("function"))
        if self._open is None or self._tool != position:
            if position in self._closed_tools:
                # Chat upstreams send each call whole before the next; a piece of one already closed (its `done`
                # event sent) cannot be shown any more, so it is left out rather than attached to another call.
                return
            output_index = len(self.items)
            item = {
                "id": f"fc_{self._stem}_{output_index}",
                "type": "function_call",
                "status": "in_progress",
                "call_id": call.get("id") or f"call_{self._stem}_{output_index}",
                "name": function.get("name") or "",
                "arguments": "",
            }
            self._start_item(item)
            self._tool = position
        index = self._open
        assert index is not None
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self.items[index]["arguments"] += arguments
            self.emit(
                "response.function_call_arguments.delta",
                item_id=self.items[index]["id"],
                output_index=index,
                delta=arguments,
            )

    def _new_text_item(self, item_type: str) -> dict[str, Any]:
        output_index = len(self.items)
        if item_type == "reasoning":
            return {
                "id": f"rs_{self._stem}_{output_index}",
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "content": [],
            }
        return {
            "id": f"msg_{self._stem}_{output_index}",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }

    def _start_item(self, item: dict[str, Any]) -> int:
        self.close("completed")
        self.items.append(item)
        self._open = len(self.items) - 1
        self.emit("response.output_item.added", output_index=self._open, item=item)
        return self._open

    def _close_part(self) -> None:
        if self._open is None or self._part is None:
            return
        item = self.items[self._open]
        part = item["content"][self._part]
        spec = _PARTS[part["type"]]
        fields = {spec.key: part[spec.key], **spec.extra}
        self.emit(spec.done, item_id=item["id"], output_index=self._open, content_index=self._part, **fields)
        self._emit_part("response.content_part.done", item, self._open)
        self._part = None

    def _emit_part(self, kind: str, item: dict[str, Any], index: int) -> None:
        assert self._part is not None
        part = item["content"][self._part]
        self.emit(kind, item_id=item["id"], output_index=index, content_index=self._part, part=part)


class ResponsesFraming:
    """The Responses API's SSE events (`event: <type>` / `data: <json>`), numbered from 0 by the relay, for one
    streamed answer. See the module's docstring for how a stream ends."""

    media_type = "text/event-stream"
    heartbeat = b": ping\n\n"
    nudge = b"\n"

    def __init__(self, response_id: str, model: str, created: int) -> None:
        self._output = _Output(response_id, model, created, wire=True)
        self._relayed: PassThrough | None = None  # set by the first chunk carrying provider events
        self._started = False
        self._ended = False

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if self._ended:
            return b""
        if RAW_EVENTS in chunk or self._relayed is not None:
            return self._pass_through(chunk.get(RAW_EVENTS))
        self._start()
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                self._output.delta(choice["delta"])
        return self._flush()

    def end(self, summary: dict[str, Any]) -> bytes:
        if self._ended:
            return b""
        self._start()
        reason = summary.get("termination_reason") or summary.get("finish_reason")
        status, fields = _ending(reason)
        self._close("completed" if status == "completed" else "incomplete")
        kind = "response.completed" if status == "completed" else "response.incomplete"
        usage = responses_usage(summary.get("usage"))
        self._output.emit(kind, response=self._response(status, usage=usage, **fields))
        self._ended = True
        return self._flush()

    def error(self, error: dict[str, Any]) -> bytes:
        if self._ended:
            return b""
        self._start()  # a stream that fails before its first chunk still begins with `response.created`
        body = _object(error.get("error"))
        code, message = body.get("code") or "server_error", body.get("message") or "The response failed."
        failure = {"code": code, "message": message, "param": body.get("param"), "type": body.get("type")}
        self._close("incomplete")
        self._output.emit("response.failed", response=self._response("failed", error=failure))
        nested = {**body, "code": code, "message": message}
        self._output.emit("error", code=code, message=message, param=body.get("param"), error=nested)
        self._ended = True
        return self._flush()

    def _pass_through(self, events: Any) -> bytes:
        """The provider's events, as the relay's; its terminal event ends the stream."""
        if self._relayed is None:
            out = self._output
            self._relayed = PassThrough(out.response_id, out.model, _id_stem(out.response_id), out.emit_event)
        relayed = self._relayed
        for event in events if isinstance(events, list) else ():
            if not isinstance(event, dict):
                continue
            if not self._started and event.get("type") != "response.created":
                self._start()  # a client's accumulator needs `response.created` first
            elif event.get("type") == "response.created" and self._started:
                continue  # one response, created once
            self._started = True
            relayed.relay(event)
            if relayed.terminal:
                self._ended = True
                break
        return self._flush()

    def _close(self, status: str) -> None:
        """Close the open items: the provider's in pass-through, else the relay's own."""
        if self._relayed is not None:
            self._relayed.close(status)
        else:
            self._output.close(status)

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        """The Response object of a terminal event: in pass-through, the provider's last with the output so far."""
        own = self._output.response(status, **fields)
        return self._relayed.response(own, status, **fields) if self._relayed is not None else own

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._output.emit("response.created", response=self._output.response("in_progress"))
        self._output.emit("response.in_progress", response=self._output.response("in_progress"))

    def _flush(self) -> bytes:
        wire = self._output.wire
        assert wire is not None
        data = "".join(wire).encode()
        wire.clear()
        return data


def responses_answer(completion: dict[str, Any]) -> dict[str, Any]:
    """The `stream: false` body: the Response object built from the assembled `chat.completion`, by the same rules
    as the streamed one."""
    output = _Output(
        str(completion.get("id") or ""),
        str(completion.get("model") or ""),
        int(completion.get("created") or 0),
        wire=False,
    )
    choices = completion.get("choices") or [{}]
    choice = _object(choices[0])
    message = _object(choice.get("message"))
    delta = {key: message.get(key) for key in ("reasoning_content", "content", "refusal")}
    calls = message.get("tool_calls") or []
    delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(calls) if isinstance(call, dict)]
    output.delta(delta)
    status, fields = _ending(choice.get("finish_reason"))
    output.close("completed" if status == "completed" else "incomplete")
    return output.response(status, usage=responses_usage(completion.get("usage")), **fields)


def responses_error(body: dict[str, Any], status: int) -> dict[str, Any]:
    """An HTTP error: the Responses API answers errors in OpenAI's shape, the relay's own."""
    return body


def responses_usage(usage: Any) -> dict[str, Any] | None:
    """Chat usage in the Responses API's names. The relay meters no cache writes; the SDK's type requires the
    count, so it is 0."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    prompt_details = _object(usage.get("prompt_tokens_details"))
    completion_details = _object(usage.get("completion_tokens_details"))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": int(prompt_details.get("cached_tokens") or 0),
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def _ending(reason: Any) -> tuple[str, dict[str, Any]]:
    """The response's status, and its `incomplete_details`, for the reason the answer ended."""
    if reason in _INCOMPLETE:
        return "incomplete", {"incomplete_details": {"reason": _INCOMPLETE[reason]}}
    if reason == "client_cancelled":
        return "cancelled", {}
    return "completed", {}


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _blank_part(kind: str) -> dict[str, Any]:
    if kind == "output_text":
        return {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    return {"type": kind, _PARTS[kind].key: ""}


def _id_stem(response_id: str) -> str:
    """What the relay's item ids are made of: the response id without its `req_` (a client-chosen id, which may
    hold any printable character, is hashed instead)."""
    stem = response_id.removeprefix("req_")
    if _SAFE_ID.fullmatch(stem):
        return stem
    return hashlib.sha256(response_id.encode()).hexdigest()[:32]

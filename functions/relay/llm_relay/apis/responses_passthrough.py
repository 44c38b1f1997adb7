"""A provider's own Responses events, relayed as the relay's (pure): the pass-through mode of `ResponsesFraming`.

Each event goes out as the provider sent it but for what names the provider's response: `response.id` becomes the
relay's response id, `response.model` the client's model, and every item id (`item_id`, `item.id`,
`response.output[*].id`) the relay's own, mapped once per provider id and keeping the provider's prefix (`msg`,
`fc`, `rs`...) since a client sending the items back may be held to it; the framing numbers the events. A
function call's `call_id` is kept: it is the model's name for the call, which the client answers with.

What the events built is kept too (the items, the open content parts, the last response object), so that when the
relay ends the stream itself (a budget cut, a cancel, the deadline, an upstream failure) the framing can close what
is open and write a terminal response with the output so far, as the synthesized mode would. The provider's
`response.failed` and `error` are never relayed: the relay writes its own failure.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["PassThrough"]

Emit = Callable[[dict[str, Any]], None]
"""Writes one event (numbered by the framing)."""

TERMINAL = frozenset({"response.completed", "response.incomplete"})
_NOT_RELAYED = frozenset({"response.failed", "error"})
_SAFE_TYPE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_PREFIX = re.compile(r"[a-z]{1,16}")
_TYPE_PREFIX = {"message": "msg", "function_call": "fc", "reasoning": "rs"}


@dataclass(frozen=True, slots=True)
class _Text:
    """Where an event's text goes: the item's `field` list at the event's `index` key (the item itself when
    None), its `key` text."""

    field: str | None
    index: str | None
    key: str


_TEXT_DELTAS = {
    "response.output_text.delta": _Text("content", "content_index", "text"),
    "response.refusal.delta": _Text("content", "content_index", "refusal"),
    "response.reasoning_text.delta": _Text("content", "content_index", "text"),
    "response.reasoning_summary_text.delta": _Text("summary", "summary_index", "text"),
    "response.function_call_arguments.delta": _Text(None, None, "arguments"),
}
_TEXT_DONES = {
    "response.output_text.done": _Text("content", "content_index", "text"),
    "response.refusal.done": _Text("content", "content_index", "refusal"),
    "response.reasoning_text.done": _Text("content", "content_index", "text"),
    "response.reasoning_summary_text.done": _Text("summary", "summary_index", "text"),
    "response.function_call_arguments.done": _Text(None, None, "arguments"),
}
_PART_EVENTS = {  # type → (the item's list, the event's index key, whether it opens the part)
    "response.content_part.added": ("content", "content_index", True),
    "response.content_part.done": ("content", "content_index", False),
    "response.reasoning_summary_part.added": ("summary", "summary_index", True),
    "response.reasoning_summary_part.done": ("summary", "summary_index", False),
}
_PART_TEXT_DONE = {  # a part's type → the event that gives its whole text, and that text's field
    "output_text": ("response.output_text.done", "text"),
    "refusal": ("response.refusal.done", "refusal"),
    "reasoning_text": ("response.reasoning_text.done", "text"),
    "summary_text": ("response.reasoning_summary_text.done", "text"),
}

_PartKey = tuple[int, str, int]  # output index, the item's list ("content"/"summary"), index in it


class PassThrough:
    """The provider events of one stream, rewritten and written through `emit`, and what they built so far."""

    def __init__(self, response_id: str, model: str, stem: str, emit: Emit) -> None:
        self._response_id, self._model, self._stem, self._emit = response_id, model, stem, emit
        self.terminal = False  # the provider's completed/incomplete was relayed: the stream is over
        self._ids: dict[str, str] = {}
        self._items: dict[int, dict[str, Any]] = {}
        self._open: set[int] = set()  # output indexes of items added and not done
        self._parts: dict[_PartKey, bool] = {}  # open parts → whether their whole text was sent
        self._arguments_done: set[int] = set()
        self._response: dict[str, Any] | None = None

    def relay(self, event: dict[str, Any]) -> None:
        """One provider event, rewritten and written (a failure, or an event of an unwritable type, is not)."""
        kind = event.get("type")
        if self.terminal or not isinstance(kind, str) or kind in _NOT_RELAYED or not _SAFE_TYPE.fullmatch(kind):
            return
        rewritten = self._rewrite(event)
        self._track(kind, rewritten)
        self._emit(rewritten)
        self.terminal = kind in TERMINAL

    def close(self, status: str) -> None:
        """Close what is open (its parts' `.done` events, then `response.output_item.done` with `status`)."""
        for index in sorted(self._open):
            item = self._items[index]
            for key in sorted(k for k in self._parts if k[0] == index):
                self._close_part(item, key)
            if item.get("type") == "function_call" and index not in self._arguments_done:
                arguments = str(item.get("arguments") or "")
                self._send("response.function_call_arguments.done", item, index, arguments=arguments)
            item["status"] = status
            self._emit({"type": "response.output_item.done", "output_index": index, "item": item})
        self._open.clear()

    def response(self, fallback: dict[str, Any], status: str, **fields: Any) -> dict[str, Any]:
        """The provider's last response object (`fallback` before one came), with the output so far, `status` and
        `fields`."""
        output = [self._items[index] for index in sorted(self._items)]
        base = {**(self._response or fallback), "error": None, "incomplete_details": None, "usage": None}
        return {**base, "status": status, "output": output, **fields}

    # --- rewriting ---------------------------------------------------------------------------------------------
    def _rewrite(self, event: dict[str, Any]) -> dict[str, Any]:
        out = {name: value for name, value in event.items() if name != "sequence_number"}
        if isinstance(out.get("item_id"), str):
            out["item_id"] = self._id(out["item_id"], None)
        if isinstance(out.get("item"), dict):
            out["item"] = self._item(out["item"])
        if isinstance(out.get("response"), dict):
            response = {**out["response"], "id": self._response_id, "model": self._model}
            if isinstance(response.get("output"), list):
                response["output"] = [self._item(o) if isinstance(o, dict) else o for o in response["output"]]
            out["response"] = response
        return out

    def _item(self, item: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(item.get("id"), str) or not item["id"]:
            return item
        return {**item, "id": self._id(item["id"], item.get("type"))}

    def _id(self, provider_id: str, item_type: Any) -> str:
        """The relay's id for a provider's item id: the same every time, `{prefix}_{stem}_{n}`."""
        known = self._ids.get(provider_id)
        if known is None:
            head, sep, _ = provider_id.partition("_")
            prefix = head if sep and _PREFIX.fullmatch(head) else _TYPE_PREFIX.get(item_type, "item")
            known = self._ids[provider_id] = f"{prefix}_{self._stem}_{len(self._ids)}"
        return known

    # --- what the events built ----------------------------------------------------------------------------------
    def _track(self, kind: str, event: dict[str, Any]) -> None:
        index, item = event.get("output_index"), event.get("item")
        if isinstance(event.get("response"), dict):
            self._response = event["response"]
        elif kind in ("response.output_item.added", "response.output_item.done"):
            if isinstance(index, int) and isinstance(item, dict):
                self._items[index] = copy.deepcopy(item)
                if kind.endswith(".added"):
                    self._open.add(index)
                else:
                    self._open.discard(index)
                    self._parts = {key: sent for key, sent in self._parts.items() if key[0] != index}
        elif kind in _PART_EVENTS:
            self._track_part(kind, event)
        elif kind in _TEXT_DELTAS:
            target = self._target(_TEXT_DELTAS[kind], event)
            key = _TEXT_DELTAS[kind].key
            if target is not None and isinstance(event.get("delta"), str):
                target[key] = str(target.get(key) or "") + event["delta"]
        elif kind in _TEXT_DONES:
            self._track_done(_TEXT_DONES[kind], event)

    def _track_part(self, kind: str, event: dict[str, Any]) -> None:
        field, index_key, opens = _PART_EVENTS[kind]
        index, at, part = event.get("output_index"), event.get(index_key), event.get("part")
        item = self._items.get(index) if isinstance(index, int) else None
        parts = item.setdefault(field, []) if item is not None else None
        if not isinstance(index, int) or not isinstance(parts, list) or not isinstance(part, dict):
            return
        if not isinstance(at, int) or not 0 <= at <= len(parts):
            return
        if at == len(parts):
            parts.append(copy.deepcopy(part))
        else:
            parts[at] = copy.deepcopy(part)
        if opens:
            self._parts[(index, field, at)] = False
        else:
            self._parts.pop((index, field, at), None)

    def _track_done(self, spec: _Text, event: dict[str, Any]) -> None:
        target = self._target(spec, event)
        if target is not None and isinstance(event.get(spec.key), str):
            target[spec.key] = event[spec.key]
        index = event.get("output_index")
        if not isinstance(index, int):
            return
        if spec.field is None or spec.index is None:
            self._arguments_done.add(index)
            return
        at = event.get(spec.index)
        if isinstance(at, int) and (index, spec.field, at) in self._parts:
            self._parts[(index, spec.field, at)] = True

    def _target(self, spec: _Text, event: dict[str, Any]) -> dict[str, Any] | None:
        """The dict an event's text goes into: the item, or one of its parts."""
        index = event.get("output_index")
        item = self._items.get(index) if isinstance(index, int) else None
        if item is None or spec.field is None or spec.index is None:
            return item
        parts, at = item.get(spec.field), event.get(spec.index)
        if not isinstance(parts, list) or not isinstance(at, int) or not 0 <= at < len(parts):
            return None
        part = parts[at]
        return part if isinstance(part, dict) else None

    # --- closing --------------------------------------------------------------------------------------------------
    def _close_part(self, item: dict[str, Any], key: _PartKey) -> None:
        index, field, at = key
        text_sent = self._parts.pop(key)
        parts = item.get(field)
        part = parts[at] if isinstance(parts, list) and at < len(parts) else None
        if not isinstance(part, dict):
            return
        index_key = "content_index" if field == "content" else "summary_index"
        text_done = _PART_TEXT_DONE.get(str(part.get("type")))
        if text_done is not None and not text_sent:
            kind, text_key = text_done
            extra: dict[str, Any] = {"logprobs": []} if kind == "response.output_text.done" else {}
            self._send(kind, item, index, **{index_key: at, text_key: part.get(text_key) or "", **extra})
        kind = "response.content_part.done" if field == "content" else "response.reasoning_summary_part.done"
        self._send(kind, item, index, **{index_key: at, "part": part})

    def _send(self, kind: str, item: dict[str, Any], index: int, **fields: Any) -> None:
        self._emit({"type": kind, "item_id": item.get("id"), "output_index": index, **fields})

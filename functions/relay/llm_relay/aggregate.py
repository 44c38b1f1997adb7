"""Assemble streamed chunks into one `chat.completion` object (pure), for `stream: false` requests."""

from __future__ import annotations

from typing import Any


class CompletionAggregator:
    def __init__(self) -> None:
        self._choices: dict[int, dict[str, Any]] = {}
        self.model: str | None = None
        self.created: int | None = None
        self.system_fingerprint: str | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        self.model = self.model or chunk.get("model")
        self.created = self.created or chunk.get("created")
        self.system_fingerprint = self.system_fingerprint or chunk.get("system_fingerprint")
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict):
                self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = int(choice.get("index", 0))
        slot = self._choices.setdefault(
            index, {"content": [], "tool_calls": {}, "role": "assistant", "finish_reason": None, "refusal": []}
        )
        delta = choice.get("delta") or {}
        if delta.get("role"):
            slot["role"] = delta["role"]
        if delta.get("content"):
            slot["content"].append(delta["content"])
        if delta.get("refusal"):
            slot["refusal"].append(delta["refusal"])
        for call in delta.get("tool_calls") or []:
            merged = slot["tool_calls"].setdefault(
                int(call.get("index", 0)), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            merged["id"] = call.get("id") or merged["id"]
            merged["type"] = call.get("type") or merged["type"]
            function = call.get("function") or {}
            merged["function"]["name"] += function.get("name") or ""
            merged["function"]["arguments"] += function.get("arguments") or ""
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):  # the deprecated `functions` API: one call, streamed like a tool call
            call = slot.setdefault("function_call", {"name": "", "arguments": ""})
            call["name"] += legacy.get("name") or ""
            call["arguments"] += legacy.get("arguments") or ""
        if choice.get("finish_reason"):
            slot["finish_reason"] = choice["finish_reason"]

    def completion(self, request_id: str, model: str, usage: dict[str, Any] | None, created: int) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            slot = self._choices[index]
            message: dict[str, Any] = {
                "role": slot["role"],
                "content": "".join(slot["content"]) or None,
                "refusal": "".join(slot["refusal"]) or None,
            }
            if "function_call" in slot:
                message["function_call"] = slot["function_call"]
            if slot["tool_calls"]:
                message["tool_calls"] = [slot["tool_calls"][i] for i in sorted(slot["tool_calls"])]
            choices.append(
                {"index": index, "message": message, "logprobs": None, "finish_reason": slot["finish_reason"]}
            )
        body: dict[str, Any] = {
            "id": request_id,
            "object": "chat.completion",
            "created": self.created or created,
            "model": self.model or model,
            "choices": choices,
            "usage": usage,
        }
        if self.system_fingerprint:
            body["system_fingerprint"] = self.system_fingerprint
        return body

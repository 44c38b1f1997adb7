"""Cold starts from Lambda's `REPORT` log lines (pure: text in, numbers out). A REPORT line with `Init Duration` is a
cold start, one with `Restore Duration` a SnapStart restore, one with neither a warm invocation; they are counted
per memory size, since the init time depends on it.

Two shapes are read: the text format, tab-separated `Name: value unit` fields after `REPORT RequestId: ...`,

    REPORT RequestId: 3f5b...\tDuration: 812.45 ms\t...\tMemory Size: 1024 MB\t...\tInit Duration: 592.31 ms

and the JSON format's `platform.report` record (`record.metrics.memorySizeMB`, `initDurationMs`, `restoreDurationMs`).
Anything else (START, END, the relay's own lines) is not a report and is left out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_TEXT_PREFIX = "REPORT RequestId:"
_JSON_TYPE = "platform.report"


@dataclass(frozen=True)
class Report:
    """One invocation's report: its memory size, and how long the init or the snapshot restore took, if it had one."""

    memory_mb: int
    init_ms: float | None = None
    restore_ms: float | None = None

    @property
    def warm(self) -> bool:
        return self.init_ms is None and self.restore_ms is None


def parse_report(message: str) -> Report | None:
    """The report a log event holds, or None when it holds none (another line, or a report without a memory size)."""
    text = message.strip()
    if text.startswith(_TEXT_PREFIX):
        return _text_report(text)
    if text.startswith("{") and _JSON_TYPE in text:
        return _json_report(text)
    return None


def _text_report(text: str) -> Report | None:
    fields: dict[str, str] = {}
    for part in text.removeprefix("REPORT ").split("\t"):
        name, sep, value = part.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    memory = _number(fields.get("Memory Size"), "MB")
    if memory is None:
        return None
    init, restore = _number(fields.get("Init Duration"), "ms"), _number(fields.get("Restore Duration"), "ms")
    return Report(int(memory), init, restore)


def _number(value: str | None, unit: str) -> float | None:
    """`592.31 ms` as 592.31; None when absent or not a finite number in that unit."""
    if value is None or not value.endswith(unit):
        return None
    try:
        number = float(value.removesuffix(unit))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _json_report(text: str) -> Report | None:
    try:
        event = json.loads(text)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("type") != _JSON_TYPE:
        return None
    record = event.get("record")
    metrics = record.get("metrics") if isinstance(record, dict) else None
    if not isinstance(metrics, dict):
        return None
    memory = _json_number(metrics.get("memorySizeMB"))
    if memory is None:
        return None
    return Report(
        int(memory), _json_number(metrics.get("initDurationMs")), _json_number(metrics.get("restoreDurationMs"))
    )


def _json_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def nearest_rank(ordered: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile of sorted values: the smallest value with at least `percent`% of the values at or
    below it, i.e. `ordered[ceil(percent / 100 * n) - 1]`. Always an observed value, never an interpolation."""
    if not ordered:
        raise ValueError("no values")
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], not {percent}")
    rank = math.ceil(percent / 100 * len(ordered))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Durations:
    """How many of one kind (inits or restores) there were, and their p50, p90 and max in ms (None when none)."""

    count: int
    p50: float | None
    p90: float | None
    max: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> Durations:
        ordered = sorted(values)
        if not ordered:
            return cls(0, None, None, None)
        return cls(len(ordered), nearest_rank(ordered, 50), nearest_rank(ordered, 90), ordered[-1])

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "p50_ms": self.p50, "p90_ms": self.p90, "max_ms": self.max}


@dataclass(frozen=True)
class MemoryGroup:
    """The reports of one memory size."""

    memory_mb: int
    invocations: int
    warm: int
    init: Durations
    restore: Durations

    def as_json(self) -> dict[str, Any]:
        return {
            "memory_mb": self.memory_mb,
            "invocations": self.invocations,
            "warm": self.warm,
            "init": self.init.as_json(),
            "restore": self.restore.as_json(),
        }


@dataclass(frozen=True)
class ColdStarts:
    """Every memory size's group, smallest first, and the invocations over all of them."""

    groups: list[MemoryGroup] = field(default_factory=list)

    @property
    def invocations(self) -> int:
        return sum(group.invocations for group in self.groups)

    @property
    def warm(self) -> int:
        return sum(group.warm for group in self.groups)

    @classmethod
    def of(cls, reports: Iterable[Report]) -> ColdStarts:
        by_memory: dict[int, list[Report]] = {}
        for report in reports:
            by_memory.setdefault(report.memory_mb, []).append(report)
        return cls([_group(memory, by_memory[memory]) for memory in sorted(by_memory)])

    def as_json(self) -> dict[str, Any]:
        return {
            "invocations": self.invocations,
            "warm": self.warm,
            "groups": [group.as_json() for group in self.groups],
        }


def _group(memory_mb: int, reports: list[Report]) -> MemoryGroup:
    return MemoryGroup(
        memory_mb=memory_mb,
        invocations=len(reports),
        warm=sum(1 for report in reports if report.warm),
        init=Durations.of(report.init_ms for report in reports if report.init_ms is not None),
        restore=Durations.of(report.restore_ms for report in reports if report.restore_ms is not None),
    )

"""The pure half of `make bench-lambda`: CPU share of a memory size, Lambda cost, medians and the report table.
No I/O, so it is unit-tested (tests/unit/test_bench_lambda_cost.py); bench/lambda_profile.py measures."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from decimal import Decimal

MEMORY_SIZES_MB = (256, 512, 1024, 1769)
FULL_VCPU_MB = 1769  # Lambda: one vCPU at 1,769 MB, proportionally less below
CFS_PERIOD_US = 100_000

# AWS Lambda duration price, arm64, first tier (up to 6 billion GB-seconds a month), us-east-1, from the AWS
# Lambda pricing page (unchanged since arm64 launched on 2021-09-29); last read 2026-11-30, not re-checked
# online by the benchmark (it runs offline).
ARM64_USD_PER_GB_SECOND = Decimal("0.0000133334")
USD_PER_MILLION_REQUESTS = Decimal("0.20")
PRICE_DATE = "2026-11-30"
PRICE_SOURCE = "aws.amazon.com/lambda/pricing, arm64, us-east-1, first tier"

# The AWS Lambda Web Adapter (a Rust binary, the extension that forwards invocations to uvicorn) cannot be
# obtained offline, so its memory is a stated stand-in added to the relay's measured peak RSS, not a measurement.
ADAPTER_RSS_STAND_IN_MB = 20.0


def cpu_share(memory_mb: int) -> float:
    """Fraction of one vCPU Lambda gives a memory size (capped at one: more than one vCPU needs more memory
    than this benchmark covers)."""
    return min(1.0, memory_mb / FULL_VCPU_MB)


def cfs_quota_us(memory_mb: int, period_us: int = CFS_PERIOD_US) -> int:
    """The cgroup CPU quota (per period) that imposes the memory size's share."""
    return max(1000, round(period_us * cpu_share(memory_mb)))


def stream_cost_usd(memory_mb: int, streams: int = 1000, seconds: float = 60.0) -> Decimal:
    """Lambda cost of `streams` invocations of `seconds` each (duration + requests; a stream is billed for as
    long as the function runs, one stream per environment)."""
    gb_seconds = Decimal(streams) * Decimal(str(seconds)) * Decimal(memory_mb) / Decimal(1024)
    requests = Decimal(streams) * USD_PER_MILLION_REQUESTS / Decimal(1_000_000)
    return (gb_seconds * ARM64_USD_PER_GB_SECOND + requests).quantize(Decimal("0.0001"))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class SizeResult:
    """Medians of the paired trials at one memory size."""

    memory_mb: int
    bare_ready_s: float
    relay_ready_s: float
    first_ttft_ms: float  # the first request's time to first token, right after the cold start
    ttft_overhead_ms: float  # single stream, relay minus direct, p50
    duration_ratio: float  # single stream, relay / direct, p50
    peak_rss_mb: float  # the relay process over one long stream (VmHWM)
    ready_ratio: float  # median over trials of relay / bare, each pair measured back to back


def paired_ratio(relay: list[float], bare: list[float]) -> float:
    """Median of the per-trial ratios: each pair ran back to back, so a load spike on a shared machine moves
    both of a pair more than it moves one median against the other."""
    return median([r / b for r, b in zip(relay, bare, strict=True)])


def format_table(results: list[SizeResult]) -> str:
    """The Markdown table docs/benchmarks.md shows."""
    lines = [
        "| memory (CPU share) | bare app ready | relay ready | ratio | first-request TTFT | 1-stream TTFT overhead "
        f"| duration vs direct | peak RSS (+{ADAPTER_RSS_STAND_IN_MB:.0f} MB adapter stand-in) "
        "| 1,000 one-minute streams |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.memory_mb} MB ({cpu_share(r.memory_mb):.0%}) | {r.bare_ready_s:.2f} s | {r.relay_ready_s:.2f} s "
            f"| {r.ready_ratio:.1f}x | {r.first_ttft_ms:.0f} ms | {r.ttft_overhead_ms:+.1f} ms "
            f"| {r.duration_ratio:.3f}x | {r.peak_rss_mb:.0f} + {ADAPTER_RSS_STAND_IN_MB:.0f} = "
            f"{r.peak_rss_mb + ADAPTER_RSS_STAND_IN_MB:.0f} MB | ${stream_cost_usd(r.memory_mb)} |"
        )
    lines.append(
        f"\nPrice: ${ARM64_USD_PER_GB_SECOND} per GB-second + ${USD_PER_MILLION_REQUESTS} per million "
        f"requests ({PRICE_SOURCE}, as of {PRICE_DATE})."
    )
    return "\n".join(lines)

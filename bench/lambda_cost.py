"""The pure half of `make bench-lambda`: CPU share of a memory size, Lambda cost (streams and billed init under
two models of the init's CPU), the recommended memory size, medians and the report tables. No I/O, so it is
unit-tested (tests/unit/test_bench_lambda_cost.py); bench/lambda_profile.py measures."""

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


def init_cost_usd(memory_mb: int, init_s: float, cold_starts: int = 1000) -> Decimal:
    """What `cold_starts` inits of `init_s` each are billed (zip functions on demand: the init phase is billed as
    duration at the function's memory size since 2025-08-01)."""
    gb_seconds = Decimal(cold_starts) * Decimal(str(init_s)) * Decimal(memory_mb) / Decimal(1024)
    return (gb_seconds * ARM64_USD_PER_GB_SECOND).quantize(Decimal("0.0001"))


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
    floor_ready_s: float  # the required stack alone (bench/floor_app.py)
    floor_ratio: float  # median over trials of relay / floor, back to back
    warm_ttft_ms: float  # the same request as the first one, on a warm relay under the same share
    boosted_first_ttft_ms: float  # the first request under the share after an init with no quota (boosted model)


@dataclass(frozen=True)
class Unthrottled:
    """Ready times with no CPU quota: the whole machine (2 vCPUs here), as on-demand Lambda is widely observed to
    run the init phase whatever the memory size (the boosted init model)."""

    floor_ready_s: float
    relay_ready_s: float
    floor_ratio: float


# What keeps the relay invisible at a memory size, for the recommendation: the first request after a (boosted)
# cold start within FIRST_REQUEST_MS of a warm one, and within WORST_FIRST_REQUEST_MS where init is not boosted
# (a share so small that the first request waits for the quota's next period, 256 MB, fails it); a warm stream's
# TTFT overhead (relay minus direct) within STREAM_TTFT_MS of the largest size's, and its duration ratio within
# STREAM_DURATION of it; the relay's peak memory (with the adapter's stand-in) within MEMORY_HEADROOM of the size.
FIRST_REQUEST_MS = 30.0
WORST_FIRST_REQUEST_MS = 60.0
STREAM_TTFT_MS = 10.0
STREAM_DURATION = 0.02
MEMORY_HEADROOM = 0.75


def invisible(result: SizeResult, largest: SizeResult) -> bool:
    """Whether a user would see nothing of the relay at this size that they would not see at the largest."""
    return (
        result.boosted_first_ttft_ms <= result.warm_ttft_ms + FIRST_REQUEST_MS
        and result.first_ttft_ms <= result.warm_ttft_ms + WORST_FIRST_REQUEST_MS
        and result.ttft_overhead_ms <= largest.ttft_overhead_ms + STREAM_TTFT_MS
        and result.duration_ratio <= largest.duration_ratio + STREAM_DURATION
        and result.peak_rss_mb + ADAPTER_RSS_STAND_IN_MB <= MEMORY_HEADROOM * result.memory_mb
    )


def recommended_memory_mb(results: list[SizeResult]) -> int:
    """The cheapest size at which the relay is invisible (the largest measured when none is)."""
    largest = max(results, key=lambda r: r.memory_mb)
    fits = [r.memory_mb for r in results if invisible(r, largest)]
    return min(fits) if fits else largest.memory_mb


def paired_ratio(relay: list[float], bare: list[float]) -> float:
    """Median of the per-trial ratios: each pair ran back to back, so a load spike on a shared machine moves
    both of a pair more than it moves one median against the other."""
    return median([r / b for r, b in zip(relay, bare, strict=True)])


def format_table(results: list[SizeResult]) -> str:
    """The start-up and streaming table docs/benchmarks.md shows."""
    lines = [
        "| memory (CPU share) | bare app ready | floor ready | relay ready | relay / floor | first-request TTFT "
        f"| warm TTFT | 1-stream TTFT overhead | duration vs direct | peak RSS (+{ADAPTER_RSS_STAND_IN_MB:.0f} MB "
        "adapter stand-in) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.memory_mb} MB ({cpu_share(r.memory_mb):.0%}) | {r.bare_ready_s:.2f} s | {r.floor_ready_s:.2f} s "
            f"| {r.relay_ready_s:.2f} s | {r.floor_ratio:.2f}x | {r.first_ttft_ms:.0f} ms | {r.warm_ttft_ms:.0f} ms "
            f"| {r.ttft_overhead_ms:+.1f} ms | {r.duration_ratio:.3f}x | {r.peak_rss_mb:.0f} + "
            f"{ADAPTER_RSS_STAND_IN_MB:.0f} = {r.peak_rss_mb + ADAPTER_RSS_STAND_IN_MB:.0f} MB |"
        )
    return "\n".join(lines)


def format_cost_table(results: list[SizeResult], unthrottled: Unthrottled) -> str:
    """What a user pays at each size: 1,000 streams of 10 s and of 60 s (billed as long as they run, the relay's
    measured duration ratio included), and 1,000 cold starts' billed init under the two init models."""
    lines = [
        "| memory | 1,000 streams of 10 s | 1,000 streams of 60 s | init, boosted (measured at full machine) "
        "| init, not boosted (measured at the share) | 1,000 inits billed, boosted / not boosted "
        "| first request after a cold start over warm, boosted / not boosted |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ten = stream_cost_usd(r.memory_mb, seconds=10 * r.duration_ratio)
        sixty = stream_cost_usd(r.memory_mb, seconds=60 * r.duration_ratio)
        boosted = init_cost_usd(r.memory_mb, unthrottled.relay_ready_s)
        throttled = init_cost_usd(r.memory_mb, r.relay_ready_s)
        lines.append(
            f"| {r.memory_mb} MB | ${ten} | ${sixty} | {unthrottled.relay_ready_s:.2f} s | {r.relay_ready_s:.2f} s "
            f"| ${boosted} / ${throttled} | {r.boosted_first_ttft_ms - r.warm_ttft_ms:+.0f} / "
            f"{r.first_ttft_ms - r.warm_ttft_ms:+.0f} ms |"
        )
    lines.append(
        f"\nPrice: ${ARM64_USD_PER_GB_SECOND} per GB-second + ${USD_PER_MILLION_REQUESTS} per million "
        f"requests ({PRICE_SOURCE}, as of {PRICE_DATE}); init billed as duration at the memory size. Recommended "
        f"MemorySize: {recommended_memory_mb(results)} MB: the cheapest size with the first request after a boosted "
        f"init within {FIRST_REQUEST_MS:g} ms of a warm one (within {WORST_FIRST_REQUEST_MS:g} ms after an init not "
        f"boosted), a warm stream's TTFT overhead within {STREAM_TTFT_MS:g} "
        f"ms and its duration ratio within {STREAM_DURATION:g} of the largest size's, and the peak memory within "
        f"{MEMORY_HEADROOM:.0%} of the size."
    )
    return "\n".join(lines)

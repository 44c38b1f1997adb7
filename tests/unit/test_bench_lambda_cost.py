"""The pure half of `make bench-lambda` (bench/lambda_cost.py): CPU share and quota of a memory size, the cost of
streams and of billed inits, the recommended memory size, and the report tables."""

from __future__ import annotations

from decimal import Decimal

from bench import lambda_cost
from bench.lambda_cost import (
    SizeResult,
    Unthrottled,
    cfs_quota_us,
    cpu_share,
    format_cost_table,
    format_table,
    init_cost_usd,
    paired_ratio,
    recommended_memory_mb,
    stream_cost_usd,
)


def test_one_vcpu_at_1769_mb_and_proportionally_less_below() -> None:
    assert cpu_share(1769) == 1.0
    assert cpu_share(3538) == 1.0  # capped: the benchmark imposes at most one vCPU
    assert round(cpu_share(512), 3) == 0.289
    assert cfs_quota_us(1769) == 100_000
    assert cfs_quota_us(512) == 28_943
    assert cfs_quota_us(256, period_us=50_000) == 7_236


def test_cost_of_a_thousand_one_minute_streams_is_gb_seconds_at_the_arm64_price_plus_requests() -> None:
    # GIVEN 1,000 streams of 60 s at 512 MB: 30,000 GB-seconds
    # THEN the cost is those GB-seconds at the arm64 price, plus 1,000 requests
    expected = Decimal(30_000) * lambda_cost.ARM64_USD_PER_GB_SECOND + Decimal("0.0002")
    assert stream_cost_usd(512) == expected.quantize(Decimal("0.0001")) == Decimal("0.4002")
    # AND it scales with the memory size
    assert stream_cost_usd(1024) == Decimal("0.8002")
    assert stream_cost_usd(256, streams=10, seconds=6) == Decimal("0.0002")


def _size(
    memory_mb: int,
    *,
    first: float = 40.0,
    warm: float = 25.0,
    rss: float = 76.0,
    boosted: float | None = None,
    overhead: float = 3.25,
    duration: float = 1.0412,
) -> SizeResult:
    return SizeResult(
        memory_mb,
        bare_ready_s=0.4,
        relay_ready_s=1.0,
        first_ttft_ms=first,
        ttft_overhead_ms=overhead,
        duration_ratio=duration,
        peak_rss_mb=rss,
        ready_ratio=2.5,
        floor_ready_s=0.9,
        floor_ratio=1.111,
        warm_ttft_ms=warm,
        boosted_first_ttft_ms=first if boosted is None else boosted,
    )


def test_the_table_has_one_row_per_size_with_the_ratio_to_the_floor_and_the_warm_ttft() -> None:
    table = format_table([_size(512, first=50.0, rss=70.4), _size(1769)]).splitlines()
    assert table[2].startswith("| 512 MB (29%) | 0.40 s | 0.90 s | 1.00 s | 1.11x | 50 ms | 25 ms | +3.2 ms | 1.041x |")
    assert table[2].endswith("| 70 + 20 = 90 MB |")
    assert table[3].startswith("| 1769 MB (100%) |")


def test_a_billed_init_is_duration_at_the_memory_size() -> None:
    # 1,000 inits of 0.6 s at 1024 MB: 600 GB-seconds
    assert init_cost_usd(1024, 0.6) == (600 * lambda_cost.ARM64_USD_PER_GB_SECOND).quantize(Decimal("0.0001"))
    assert init_cost_usd(512, 0.6) == Decimal("0.0040")
    assert init_cost_usd(512, 0.6, cold_starts=10) == Decimal("0.0000")


def test_the_cost_table_bills_streams_by_their_measured_duration_and_inits_under_both_models() -> None:
    # GIVEN a relay whose streams last 1.0412x direct, ready in 0.5 s unthrottled and 1.0 s under each share
    results = [_size(512), _size(1024)]
    table = format_cost_table(results, Unthrottled(floor_ready_s=0.45, relay_ready_s=0.5, floor_ratio=1.1))
    rows = table.splitlines()
    # THEN a 10 s stream is billed 10.412 s: 1,000 at 512 MB are 5,206 GB-seconds
    assert rows[2].startswith(
        f"| 512 MB | ${stream_cost_usd(512, seconds=10.412)} | ${stream_cost_usd(512, seconds=62.472)} |"
    )
    # AND 1,000 inits are billed at 0.5 s (boosted) and 1.0 s (not boosted)
    assert f"| ${init_cost_usd(512, 0.5)} / ${init_cost_usd(512, 1.0)} |" in rows[2]
    assert rows[2].endswith("| +15 / +15 ms |")  # the first request over the warm one, boosted / not boosted
    # AND the price's date and the recommendation are stated
    assert lambda_cost.PRICE_DATE in rows[-1] and "Recommended MemorySize: 512 MB" in rows[-1]


def test_the_recommended_size_is_the_cheapest_where_the_relay_stays_invisible() -> None:
    # GIVEN 256 MB with a first request 60 ms over warm, 512 MB within 30 ms, and the larger sizes
    results = [_size(256, first=90.0, warm=30.0), _size(512, first=50.0, warm=27.0), _size(1024), _size(1769)]
    # THEN 512 MB
    assert recommended_memory_mb(results) == 512
    # AND a size whose warm stream gets its first token 10 ms later than at the largest size, or lasts 2 % longer,
    # or whose memory is too tight, is not invisible
    assert recommended_memory_mb([_size(512, overhead=14.0), _size(1024), _size(1769, overhead=3.0)]) == 1024
    assert recommended_memory_mb([_size(512, duration=1.07), _size(1024), _size(1769, duration=1.04)]) == 1024
    assert recommended_memory_mb([_size(128, rss=90.0), _size(1769)]) == 1769
    # AND with no size invisible, the largest
    assert recommended_memory_mb([_size(512, first=200.0), _size(1024, first=200.0)]) == 1024
    # AND the first request that counts is the one after a boosted init (as on-demand Lambda runs init), as long as
    # the one after an init that is not boosted stays within 60 ms of warm
    assert recommended_memory_mb([_size(512, first=80.0, boosted=40.0), _size(1024)]) == 512
    assert recommended_memory_mb([_size(256, first=110.0, boosted=40.0), _size(512), _size(1024)]) == 512


def test_the_ready_ratio_is_the_median_of_back_to_back_pairs() -> None:
    # GIVEN three pairs, the second hit by a load spike on both sides
    relay, bare = [0.6, 3.0, 0.66], [0.2, 1.5, 0.2]
    # THEN the ratio is the median of 3.0, 2.0 and 3.3
    assert round(paired_ratio(relay, bare), 9) == 3.0

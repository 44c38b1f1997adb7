"""The pure half of `make bench-lambda` (bench/lambda_cost.py): CPU share and quota of a memory size, the cost of
1,000 one-minute streams, and the report table."""

from __future__ import annotations

from decimal import Decimal

from bench import lambda_cost
from bench.lambda_cost import SizeResult, cfs_quota_us, cpu_share, format_table, paired_ratio, stream_cost_usd


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


def test_the_table_has_one_row_per_size_with_the_ready_ratio_and_states_the_price_date() -> None:
    results = [
        SizeResult(
            512,
            bare_ready_s=0.4,
            relay_ready_s=1.0,
            first_ttft_ms=50.0,
            ttft_overhead_ms=3.25,
            duration_ratio=1.0412,
            peak_rss_mb=70.4,
            ready_ratio=2.5,
        ),
        SizeResult(1769, 0.2, 0.5, 20.0, -0.5, 1.01, 71.0, 2.5),
    ]
    table = format_table(results).splitlines()
    assert table[2].startswith("| 512 MB (29%) | 0.40 s | 1.00 s | 2.5x | 50 ms | +3.2 ms | 1.041x |")
    assert "70 + 20 = 90 MB" in table[2] and table[2].endswith("| $0.4002 |")
    assert table[3].startswith("| 1769 MB (100%) | 0.20 s | 0.50 s | 2.5x |")
    assert lambda_cost.PRICE_DATE in table[-1] and "per GB-second" in table[-1]


def test_the_ready_ratio_is_the_median_of_back_to_back_pairs() -> None:
    # GIVEN three pairs, the second hit by a load spike on both sides
    relay, bare = [0.6, 3.0, 0.66], [0.2, 1.5, 0.2]
    # THEN the ratio is the median of 3.0, 2.0 and 3.3
    assert round(paired_ratio(relay, bare), 9) == 3.0

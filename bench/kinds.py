"""Benchmark: what each kind of upstream costs the relay, one relay routing a model to each.

    make bench-kinds      (or: .venv/bin/python -m bench.kinds --streams 20)

Starts the local DynamoDB, the mock upstream (OpenAI SSE, Ollama NDJSON, this relay's NDJSON) and the local
Bedrock ConverseStream server as separate processes, and one relay (`make dev`'s entry point) with an upstream
table routing a model to each kind. Per kind: single streams one after another (TTFT and duration p50, against the
upstream's own pacing: 200 chunks 5 ms apart after 20 ms), then `--streams` concurrent streams, with the relay
process's CPU time per relayed chunk. Not part of `make test`: timings are measured here, never asserted there.
Writes bench/results/kinds.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.run import ROOT, free_port, pct, start, wait_http

KEY = "lr-bench-key"
CHUNKS = 200
PACING = {"tokens": CHUNKS, "chunk_delay_ms": 5, "ttft_ms": 20}
MODELS = {"openai": "gpt-4o-mini", "ollama": "llama3.2", "ndjson": "inhouse-1", "bedrock": "amazon.nova-lite-v1:0"}


def table(mock: str, bedrock: str) -> list[dict[str, Any]]:
    return [
        {"name": "ollama", "kind": "ollama", "url": mock, "models": ["llama*"]},
        {"name": "ndjson", "kind": "ndjson", "url": f"{mock}/ndjson/chat", "models": ["inhouse-*"]},
        {"name": "bedrock", "kind": "bedrock", "url": bedrock, "region": "us-east-1", "models": ["amazon.*"]},
        {"name": "openai", "kind": "openai", "url": f"{mock}/v1", "models": ["*"]},
    ]


async def one_stream(client: httpx.AsyncClient, url: str, model: str) -> tuple[float, float, int]:
    """(TTFT ms, duration ms, content chunks) of one SSE stream through the relay."""
    body = {
        "model": model,
        "stream": True,
        "messages": [
            {"role": "system", "content": f"mock: {json.dumps(PACING)}"},
            {"role": "user", "content": "bench"},
        ],
    }
    started = time.perf_counter()
    ttft, chunks = 0.0, 0
    async with client.stream("POST", url, json=body, headers={"authorization": f"Bearer {KEY}"}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                chunks += 1
                ttft = ttft or (time.perf_counter() - started) * 1000
    return ttft, (time.perf_counter() - started) * 1000, chunks


async def measure(url: str, model: str, singles: int, concurrent: int, relay: psutil.Process) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrent + 10, max_keepalive_connections=concurrent + 10)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(one_stream(client, url, model) for _ in range(5)))  # warm-up
        single = [await one_stream(client, url, model) for _ in range(singles)]
        before = relay.cpu_times()
        many = await asyncio.gather(*(one_stream(client, url, model) for _ in range(concurrent)))
        after = relay.cpu_times()
    cpu_s = (after.user - before.user) + (after.system - before.system)
    relayed = sum(chunks for _, _, chunks in many)
    complete = sum(1 for *_, chunks in single + many if chunks == CHUNKS)
    return {
        "complete": f"{complete}/{singles + concurrent}",
        "single_ttft_p50_ms": round(pct([t for t, _, _ in single], 50), 1),
        "single_duration_p50_ms": round(pct([d for _, d, _ in single], 50), 1),
        "concurrent_ttft_p50_ms": round(pct([t for t, _, _ in many], 50), 1),
        "concurrent_duration_p50_ms": round(pct([d for _, d, _ in many], 50), 1),
        "relay_cpu_us_per_chunk": round(cpu_s / max(1, relayed) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--singles", type=int, default=10)
    parser.add_argument("--streams", type=int, default=20, help="concurrent streams per kind")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kinds.json")
    args = parser.parse_args()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"})
    python = sys.executable
    moto_port, mock_port, bedrock_port, relay_port = free_port(), free_port(), free_port(), free_port()
    procs = [
        start([python, "-m", "llm_relay_dev.local_dynamodb", "-p", str(moto_port)]),
        start([python, "-m", "llm_relay_dev.mock_upstream", str(mock_port)]),
        start([python, "-m", "llm_relay_dev.bedrock_local", str(bedrock_port)]),
    ]
    moto, mock, bedrock = (f"http://127.0.0.1:{port}" for port in (moto_port, mock_port, bedrock_port))
    try:
        wait_http(moto)
        wait_http(f"{mock}/healthz")
        wait_http(f"{bedrock}/healthz")
        relay_env = {
            "PORT": str(relay_port),
            "RELAY_DYNAMODB_ENDPOINT": moto,
            "RELAY_DEV_KEY": KEY,
            "RELAY_UPSTREAMS": json.dumps(table(mock, bedrock)),
        }
        relay_proc = start([python, "-m", "llm_relay_dev.devserver"], relay_env)
        procs.append(relay_proc)
        url = f"http://127.0.0.1:{relay_port}"
        wait_http(f"{url}/healthz")
        relay = psutil.Process(relay_proc.pid)
        results = {
            kind: asyncio.run(measure(f"{url}/v1/chat/completions", model, args.singles, args.streams, relay))
            for kind, model in MODELS.items()
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    report = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "workload": {"chunks": CHUNKS, "pacing": PACING, "singles": args.singles, "concurrent": args.streams},
        "kinds": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    columns = list(next(iter(results.values())))
    print(f"{'kind':<8} " + " ".join(f"{c:>27}" for c in columns))
    for kind, row in results.items():
        print(f"{kind:<8} " + " ".join(f"{row[c]!s:>27}" for c in columns))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

"""What rendering a long streamed markdown answer costs the page, in headless Chromium against `make dev`.

    make bench-browser      (or: .venv/bin/python -m bench.browser_rendering)

Starts the dev server (its mock upstream and local DynamoDB) and Chromium (Debian's `chromium` and
`chromium-driver`), then streams the mock's markdown document through two consumers in one page
(llm_relay_dev/browser_rendering_harness.js): the browser client with renderer.js, and a naive consumer that
re-renders the whole accumulated markdown on every token (same markdown-it + DOMPurify, scroll to the bottom), at
20,000 characters (4 a chunk) and 100,000 (10 a chunk), 1 ms apart. The renderer runs first: the naive runs leave a
heap of garbage whose collection would land in whatever is measured next. The naive consumer would need minutes for
either document (its work per token grows with the answer), so it runs under a time cap and reports how far it got.

The targets for the client + renderer: at least 50 frames a second while the answer arrives, no task over 50 ms,
the text complete within 500 ms of the last byte. Timing, so measured here on an idle machine and not asserted by
`make test` (a loaded machine would fail them by luck); the test suite checks what no load changes: the whole
answer shows, rendered at most once a frame, each render given an open block, never the whole answer
(tests/integration/test_browser_rendering.py). Writes bench/results/browser_rendering.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.run import free_port, start, wait_http
from llm_relay_dev.browser import chromium, stream_markdown
from llm_relay_dev.mock_markdown import markdown_document

ROOT = Path(__file__).resolve().parent.parent
KEY = "lr-bench-browser-key"
SIZES = ((20_000, 4), (100_000, 10))  # (characters, characters a chunk)
NAIVE_CAP_MS = {20_000: 6_000, 100_000: 4_000}
FRAMES_PER_S = 50.0
LONGEST_TASK_MS = 50.0
COMPLETE_AFTER_LAST_BYTE_MS = 500.0
FIGURES = (
    "consumer",
    "capped",
    "receivedChars",
    "fps",
    "framesWhileStreaming",
    "longestTaskMs",
    "longTasks",
    "streamingMs",
    "completeAfterLastByteMs",
    "lastByteFrom",
    "shows",
    "pushes",
    "renders",
    "renderedChars",
    "longestRender",
    "termination",
)


def measure(url: str) -> list[dict[str, Any]]:
    """Each consumer at each size, the renderer first; the figures of each run with its document size."""
    runs: list[dict[str, Any]] = []
    with chromium() as browser:
        browser.set_script_timeout(180)
        browser.get(f"{url}/")
        for consumer in ("renderer", "naive"):
            for chars, chunk_chars in SIZES:
                mock = {"markdown": chars, "chunk_chars": chunk_chars, "chunk_delay_ms": 1, "ttft_ms": 5}
                cap = NAIVE_CAP_MS[chars] if consumer == "naive" else 0
                document = markdown_document(chars)
                result = stream_markdown(browser, KEY, consumer, document, mock, cap)
                figures = {name: result[name] for name in FIGURES}
                figures["chars"] = chars
                figures["complete"] = result["received"] == document and result["text"] == result["referenceText"]
                runs.append(figures)
    return runs


def targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    renderer = [run for run in runs if run["consumer"] == "renderer"]
    met = all(
        run["complete"]
        and run["fps"] >= FRAMES_PER_S
        and run["longestTaskMs"] <= LONGEST_TASK_MS
        and run["completeAfterLastByteMs"] <= COMPLETE_AFTER_LAST_BYTE_MS
        for run in renderer
    )
    return {
        "frames_per_s_at_least": FRAMES_PER_S,
        "longest_task_ms_at_most": LONGEST_TASK_MS,
        "complete_after_last_byte_ms_at_most": COMPLETE_AFTER_LAST_BYTE_MS,
        "met": met,
    }


def table(runs: list[dict[str, Any]]) -> str:
    rows = [
        "| consumer | characters | frames/s | longest task (ms) | long tasks | longest render (chars) "
        "| text complete after last byte |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        done = (
            f"capped at {NAIVE_CAP_MS[run['chars']] / 1000:.0f} s with {run['receivedChars']:,} of "
            f"{run['chars']:,}+ characters"
            if run["capped"]
            else f"{run['completeAfterLastByteMs']:.0f} ms"
        )
        rows.append(
            f"| {run['consumer']} | {run['chars']:,} | {run['fps']:.1f} | {run['longestTaskMs']:.0f} "
            f"| {len(run['longTasks'])} | {run['longestRender']:,} | {done} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "browser_rendering.json")
    args = parser.parse_args()
    port, moto_port = free_port(), free_port()
    # an empty endpoint: `make dev`'s own moto, whatever this shell's RELAY_DYNAMODB_ENDPOINT says
    env = {"PORT": str(port), "RELAY_MOTO_PORT": str(moto_port), "RELAY_DEV_KEY": KEY, "RELAY_DYNAMODB_ENDPOINT": ""}
    relay = start([sys.executable, "-m", "llm_relay_dev.devserver"], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz")
        runs = measure(url)
    finally:
        relay.terminate()
        relay.wait(timeout=10)
    verdict = targets(runs)
    report = {"runs": runs, "targets": verdict, "cpu_count": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(runs))
    print(
        f"\nclient + renderer: at least {FRAMES_PER_S:g} frames/s, no task over {LONGEST_TASK_MS:g} ms, complete "
        f"within {COMPLETE_AFTER_LAST_BYTE_MS:g} ms of the last byte: {'met' if verdict['met'] else 'MISSED'}"
    )


if __name__ == "__main__":
    main()

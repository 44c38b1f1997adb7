"""`make bench-lambda`: the built artifact run the way Lambda runs it, at 256, 512, 1024 and 1769 MB.

    make bench-lambda     (or: .venv/bin/python -m bench.lambda_profile --build .aws-sam/bench-lambda)

Lambda conditions, imitated: CPython 3.12 (the runtime) without site-packages, the function and the layer as
`sam build` made them, bytecode writing off (`/var/task` and `/opt` are read-only there), an AWS SDK compiled for
3.12 standing in for the runtime's, and the memory size's CPU share imposed by a cgroup CPU quota (one vCPU at
1,769 MB). Needs root for the quota; without it, says so and prints no figures.

First with no quota (the whole machine: the boosted init model, on-demand Lambda's init phase with about two
vCPUs), then per size, trials of the bare app, the floor (bench/floor_app.py: the required stack alone) and the
relay back to back, the order rotating: process start to /healthz 200, and the relay's first request's TTFT right
after its cold start; the same first request after an init with no quota (moved into the share once ready: the
boosted model); then, on a warm relay under the same quota, the same request's warm TTFT, single streams against
direct, and the peak RSS of one long stream. The mock upstream and the local DynamoDB run in their own processes
outside the quota. Prints the tables (bench/lambda_cost.py: start-up and streaming, then what a user pays with
the recommended memory size) and writes the figures to a new file under
bench/results/runs/, which git ignores, and says which: a run never shows the clone as modified. The committed
bench/results/lambda.json is the reference docs/benchmarks.md's table was taken from; `--out bench/results/lambda.json`
replaces it on purpose.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench import lambda_cost
from bench.run import free_port, start, wait_http

ROOT = Path(__file__).resolve().parent.parent
KEY = "lr-bench-lambda-key"
RUNTIME_SDK = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
READY_TIMEOUT_S = 60.0


def compile_312(python312: str, folder: Path) -> None:
    subprocess.run(
        [python312, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", str(folder)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def prepare(python312: str, work: Path) -> tuple[Path, Path, Path]:
    """The runtime SDK stand-in, the bare app and the floor app, compiled by 3.12 like the artifact."""
    sdk, bare, floor = work / "runtime-sdk", work / "bare-app", work / "floor-app"
    for folder in (sdk, bare, floor):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    site = Path(httpx.__file__).resolve().parent.parent
    for name in RUNTIME_SDK:
        source = site / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, sdk / name)
    shutil.copy(ROOT / "bench" / "bare_app.py", bare / "bare_app.py")
    shutil.copy(ROOT / "bench" / "floor_app.py", floor / "floor_app.py")
    for folder in (sdk, bare, floor):
        for cache in folder.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
        compile_312(python312, folder)
    return sdk, bare, floor


@dataclass(frozen=True)
class Quota:
    """A cgroup holding a memory size's CPU share: `enter` is the pre-exec hook that starts a child in it, `move`
    puts a running process in it (an init that ran unthrottled, then requests under the share)."""

    procs: Path

    def enter(self) -> None:
        self.move(os.getpid())

    def move(self, pid: int) -> None:
        self.procs.write_text(str(pid))


@contextmanager
def cpu_quota(memory_mb: int) -> Iterator[Quota]:
    """A cgroup holding the memory size's CPU share, removed on exit."""
    name = f"llm-relay-bench-{memory_mb}-{os.getpid()}"
    if (CGROUP_V2 / "cgroup.controllers").exists():
        group = CGROUP_V2 / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{lambda_cost.cfs_quota_us(memory_mb)} {lambda_cost.CFS_PERIOD_US}")
    else:
        group = CGROUP_V1 / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(str(lambda_cost.CFS_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(lambda_cost.cfs_quota_us(memory_mb)))
    try:
        yield Quota(group / "cgroup.procs")
    finally:
        group.rmdir()


def quota_unavailable() -> str | None:
    """Why the CPU share cannot be imposed here, or None."""
    if os.geteuid() != 0:
        return "not root: a cgroup CPU quota is needed to imitate a memory size's CPU share"
    if not (CGROUP_V2 / "cgroup.controllers").exists() and not (CGROUP_V1 / "cpu.cfs_quota_us").exists():
        return "no cgroup cpu controller mounted (v1 /sys/fs/cgroup/cpu or v2 cpu.max)"
    return None


class Launcher:
    """Starts the bare app, the floor or the relay from the artifact, under a quota, and times it to /healthz 200."""

    def __init__(
        self, python312: str, build: Path, sdk: Path, bare: Path, floor: Path, base_env: dict[str, str]
    ) -> None:
        layer = build / "DepsLayerX86" / "python"
        if os.uname().machine in ("aarch64", "arm64"):
            layer = build / "DepsLayerArm64" / "python"
        self.python312 = python312
        self.paths = {
            "relay": [build / "RelayFunction", layer, sdk],
            "bare": [bare, layer],
            "floor": [floor, layer, sdk],
        }
        self.base_env = base_env

    def start(self, which: str, enter: Callable[[], None]) -> tuple[subprocess.Popen[bytes], str, float]:
        """The process, its URL and its ready time in seconds (process start to the first /healthz 200)."""
        port = free_port()
        env = {**self.base_env, "PORT": str(port), "PYTHONDONTWRITEBYTECODE": "1"}
        env["PYTHONPATH"] = os.pathsep.join(map(str, self.paths[which]))
        module = {"relay": "llm_relay.serve", "bare": "bare_app", "floor": "floor_app"}[which]
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        process = subprocess.Popen(
            [self.python312, "-S", "-m", module],
            env=env,
            preexec_fn=enter,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with httpx.Client(timeout=1) as client:
            while time.perf_counter() - started < READY_TIMEOUT_S:
                try:
                    if client.get(f"{url}/healthz").status_code == 200:
                        return process, url, time.perf_counter() - started
                except httpx.TransportError:
                    if process.poll() is not None:
                        raise RuntimeError(f"{module} exited with {process.returncode}") from None
                time.sleep(0.002)
        process.kill()
        raise RuntimeError(f"{module} not ready in {READY_TIMEOUT_S} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=30)


def stream_once(url: str, tokens: int, delay_ms: float) -> tuple[float, float]:
    """TTFT and duration (ms) of one streamed chat, to the relay (`url` is its base) or the mock (direct)."""
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "bench"}],
        "mock": {"tokens": tokens, "chunk_delay_ms": delay_ms, "ttft_ms": 0},
    }
    started = time.perf_counter()
    ttft = None
    with (
        httpx.Client(timeout=120) as client,
        client.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
        ) as response,
    ):
        response.raise_for_status()
        for line in response.iter_lines():
            if ttft is None and line.startswith("data: {") and '"content":"' in line:
                ttft = time.perf_counter() - started
    assert ttft is not None, "no content chunk"
    return ttft * 1000, (time.perf_counter() - started) * 1000


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


APPS = ("bare", "floor", "relay")
FIRST_REQUEST = (20, 5.0)  # the first request after a cold start, and the warm one it is compared with: 20 chunks


def cold_starts(
    launcher: Launcher, enter: Callable[[], None], trials: int, apps: tuple[str, ...] = APPS
) -> dict[str, list[float]]:
    """Per app, its ready times over `trials` back-to-back rounds (the order rotating, so none always goes first),
    and under "first_ttft" the relay's first request's TTFT right after each of its cold starts."""
    times: dict[str, list[float]] = {app: [] for app in apps}
    times["first_ttft"] = []
    for trial in range(trials):
        order = apps[trial % len(apps) :] + apps[: trial % len(apps)]
        for which in order:
            process, url, ready = launcher.start(which, enter)
            try:
                times[which].append(ready)
                if which == "relay":
                    times["first_ttft"].append(stream_once(url, *FIRST_REQUEST)[0])
            finally:
                stop(process)
    return times


def measure_unthrottled(launcher: Launcher, trials: int) -> lambda_cost.Unthrottled:
    """The floor and the relay with no quota: the boosted init model."""
    times = cold_starts(launcher, lambda: None, trials, ("floor", "relay"))
    med = lambda_cost.median
    return lambda_cost.Unthrottled(
        med(times["floor"]), med(times["relay"]), lambda_cost.paired_ratio(times["relay"], times["floor"])
    )


def boosted_first_requests(launcher: Launcher, quota: Quota, trials: int) -> list[float]:
    """The relay's first request's TTFT when its init ran with no quota (the boosted model) and the request under
    the share: the process is moved into the quota once ready, as Lambda gives the init more CPU than the size."""
    ttfts = []
    for _ in range(trials):
        process, url, _ = launcher.start("relay", lambda: None)
        try:
            quota.move(process.pid)
            ttfts.append(stream_once(url, *FIRST_REQUEST)[0])
        finally:
            stop(process)
    return ttfts


def measure_size(launcher: Launcher, memory_mb: int, mock_url: str, trials: int) -> lambda_cost.SizeResult:
    with cpu_quota(memory_mb) as quota:
        times = cold_starts(launcher, quota.enter, trials)
        boosted = boosted_first_requests(launcher, quota, trials)
        process, url, _ = launcher.start("relay", quota.enter)
        try:
            stream_once(url, *FIRST_REQUEST)  # warm: the pools and caches a warm environment has
            warm = [stream_once(url, *FIRST_REQUEST)[0] for _ in range(trials)]
            overhead, ratios = [], []
            for _ in range(trials):
                direct = stream_once(mock_url, 200, 5)
                relayed = stream_once(url, 200, 5)
                overhead.append(relayed[0] - direct[0])
                ratios.append(relayed[1] / direct[1])
            stream_once(url, 2000, 5)  # one long stream (10 s of chunks)
            rss = peak_rss_mb(process.pid)
        finally:
            stop(process)
    med = lambda_cost.median
    return lambda_cost.SizeResult(
        memory_mb,
        med(times["bare"]),
        med(times["relay"]),
        med(times["first_ttft"]),
        med(overhead),
        med(ratios),
        rss,
        lambda_cost.paired_ratio(times["relay"], times["bare"]),
        med(times["floor"]),
        lambda_cost.paired_ratio(times["relay"], times["floor"]),
        med(warm),
        med(boosted),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=ROOT / ".aws-sam" / "bench-lambda")
    parser.add_argument("--python312", default=find_python312())
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(lambda_cost.MEMORY_SIZES_MB))
    parser.add_argument("--out", type=Path, default=None, help="where the figures go (default: a new file in runs/)")
    args = parser.parse_args()
    reason = quota_unavailable()
    if reason:
        print(f"bench-lambda: no figures: {reason}. Run it as root on Linux.", file=sys.stderr)
        raise SystemExit(2)
    sdk, bare, floor = prepare(args.python312, args.build.parent / "bench-lambda-work")
    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    os.environ.update(aws)
    dynamodb_port, mock_port = free_port(), free_port()
    helpers = [
        start([sys.executable, "-m", "llm_relay_dev.local_dynamodb", "-p", str(dynamodb_port)]),
        start([sys.executable, "-m", "llm_relay_dev.mock_upstream", str(mock_port)]),
    ]
    dynamodb_url, mock_url = f"http://127.0.0.1:{dynamodb_port}", f"http://127.0.0.1:{mock_port}"
    try:
        wait_http(dynamodb_url)
        wait_http(f"{mock_url}/healthz")
        create_key(dynamodb_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "PYTHON"))}
        env.update(aws)
        env.update(
            {
                "RELAY_DYNAMODB_ENDPOINT": dynamodb_url,
                "RELAY_UPSTREAM_URL": f"{mock_url}/v1",
                "RELAY_FLUSH_NUDGE": "true",
            }
        )
        launcher = Launcher(args.python312, args.build, sdk, bare, floor, env)
        unthrottled = measure_unthrottled(launcher, args.trials)
        print(json.dumps({"unthrottled": asdict(unthrottled)}), flush=True)
        results = []
        for memory_mb in args.sizes:
            results.append(measure_size(launcher, memory_mb, mock_url, args.trials))
            print(json.dumps(asdict(results[-1])), flush=True)
    finally:
        for helper in helpers:
            helper.terminate()
            helper.wait(timeout=10)
    report = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "trials": args.trials}
    report["unthrottled"] = asdict(unthrottled)
    report["sizes"] = [asdict(r) for r in results]
    report["recommended_memory_mb"] = lambda_cost.recommended_memory_mb(results)
    print(f"\nload average at the end: {report['load_average']}, {args.trials} paired trials per size (medians)\n")
    print(
        f"no quota (the boosted init model): floor {unthrottled.floor_ready_s:.2f} s, relay "
        f"{unthrottled.relay_ready_s:.2f} s, relay / floor {unthrottled.floor_ratio:.2f}x\n"
    )
    print(lambda_cost.format_table(results))
    print()
    print(lambda_cost.format_cost_table(results, unthrottled))
    write_report(report, args.out or run_file())


RUNS = ROOT / "bench" / "results" / "runs"  # git-ignored


def run_file(now: float | None = None) -> Path:
    """A new file for this run's figures under RUNS, named by its UTC time."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return RUNS / f"lambda-{stamp}.json"


def write_report(report: dict[str, object], out: Path) -> None:
    """Write the figures to `out` and say where they went."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigures written to {out}")


def find_python312() -> str | None:
    """RELAY_TEST_PYTHON312, else pyenv's 3.12, else python3.12 on PATH (as tests/packaging finds it)."""
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    return os.environ.get("RELAY_TEST_PYTHON312") or (pyenv[-1] if pyenv else shutil.which("python3.12"))


def create_key(endpoint: str) -> None:
    from llm_relay.dynamo import Stores, make_client
    from llm_relay_dev.dev_key import ensure_dev_key

    ensure_dev_key(Stores.create("llm-relay", make_client(endpoint, "us-east-1")).keys, KEY)


if __name__ == "__main__":
    main()

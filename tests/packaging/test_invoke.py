"""`make invoke`: every event through the Lambda Runtime Interface Emulator, awslambdaric and the Mangum handler
(scripts/invoke.py), answered as documented; the Lambda response object is the only thing on stdout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.packaging.conftest import REPO, SAM_VENV
from tests.packaging.expected import DEV_KEY, EVENTS_DIR, check_response, event_names

pytestmark = pytest.mark.slow


def _invoke(*events: str) -> subprocess.CompletedProcess[str]:
    if not (SAM_VENV / "bin" / "sam").exists():
        pytest.fail("aws-sam-cli is not installed: run `make sam` (make test does it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_DEV_KEY"] = DEV_KEY
    paths = [str(EVENTS_DIR / f"{name}.json") for name in events]
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "invoke.py"), *paths],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_event_gets_its_documented_answer_through_the_emulator():
    # GIVEN every event in events/
    names = event_names()
    # WHEN they are invoked one after another in one emulated sandbox (a cold start, then warm invocations)
    done = _invoke(*names)
    # THEN stdout is a JSON array of Lambda response objects, each the documented answer
    assert done.returncode == 0, done.stderr
    responses = json.loads(done.stdout)
    assert len(responses) == len(names)
    for name, response in zip(names, responses, strict=True):
        check_response(name, response)
    # AND the emulator really ran them (its per-invocation report went to stderr)
    assert done.stderr.count("REPORT RequestId:") == len(names)


def test_one_event_prints_one_response_object():
    done = _invoke("healthz")
    assert done.returncode == 0, done.stderr
    check_response("healthz", json.loads(done.stdout))


def test_every_event_has_a_documented_answer():
    from tests.packaging.expected import CHECKS

    assert set(event_names()) == set(CHECKS)
    docs = (REPO / "docs" / "lambda-local.md").read_text(encoding="utf-8")
    assert all(f"events/{name}.json" in docs for name in event_names())


def test_make_invoke_prints_only_the_response_for_every_event():
    """`make invoke EVENT=events/<file> | jq .statusCode`: make's own lines and every log go to stderr."""
    if not (SAM_VENV / "bin" / "sam").exists():
        pytest.fail("aws-sam-cli is not installed: run `make sam` (make test does it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "MAKE")) and k != "MFLAGS"}
    # WHEN every event is invoked through make (in parallel: each run has its own emulator, moto and mock)
    running = {
        name: subprocess.Popen(
            ["make", "invoke", f"EVENT=events/{name}.json"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in event_names()
    }
    answers = {}
    try:
        for name, process in running.items():
            answers[name] = process.communicate(timeout=300)
    finally:  # one that failed or hung leaves no process or pipe behind for the tests after it
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    for name, (stdout, stderr) in answers.items():
        assert running[name].returncode == 0, stderr
        # THEN stdout is exactly one JSON object, the documented answer
        check_response(name, json.loads(stdout))
        if shutil.which("jq"):
            status = subprocess.run(["jq", ".statusCode"], input=stdout, capture_output=True, text=True, check=True)
            assert status.stdout.strip() == str(json.loads(stdout)["statusCode"])

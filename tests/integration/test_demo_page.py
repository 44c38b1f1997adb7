"""`make dev`'s demo page, in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`) driven
by Selenium against the dev server's own entry point. Type a prompt, see tokens arrive before the stream ends,
press Stop, and find the upstream request closed and the page showing `client_cancelled`. A screenshot taken
mid-stream is kept in tests/artifacts/ (gitignored) for a person to look at. Plus what needs no browser: the page
is served at `/` with its modules (the markdown bundle naming its pinned versions), and CORS answers local origins
only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.integration.browser_support import chromium, element_text
from tests.integration.devserver_support import DevServer, dev_server
from tests.waiting import wait_until

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
VENDOR = Path(__file__).resolve().parents[2] / "clients" / "browser" / "scripts" / "vendor"


@pytest.fixture(scope="module")
def dev() -> Iterator[DevServer]:
    with dev_server(RELAY_DEV_KEY="lr-demo-page-key") as server:
        yield server


def test_the_page_is_served_at_the_root_with_the_dev_key(dev: DevServer) -> None:
    page = httpx.get(f"{dev.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'value="lr-demo-page-key"' in page.text and 'id="stop"' in page.text
    client = httpx.get(f"{dev.url}/llm-relay-client.js")
    assert client.status_code == 200 and "export function streamChat" in client.text


def test_the_markdown_bundle_is_served_and_names_its_pinned_versions(dev: DevServer) -> None:
    import json

    # GIVEN the exact versions the bundle's build script installs
    pinned = json.loads((VENDOR / "package.json").read_text(encoding="utf-8"))["dependencies"]
    # WHEN the page's modules are fetched
    bundle = httpx.get(f"{dev.url}/vendor/markdown.bundle.js")
    renderer = httpx.get(f"{dev.url}/renderer.js")
    # THEN the bundle's first line names those versions, and the renderer is served beside the client
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    header = bundle.text.splitlines()[0]
    assert f"markdown-it {pinned['markdown-it']} + dompurify {pinned['dompurify']}" in header
    assert f"esbuild {pinned['esbuild']}" in header
    assert renderer.status_code == 200 and "export function createRenderer" in renderer.text


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:5173", "http://[::1]:8000"])
def test_a_preflight_from_a_local_origin_is_allowed(dev: DevServer, origin: str) -> None:
    preflight = httpx.options(
        f"{dev.url}/api/v1/chat/stream",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == origin
    answer = httpx.get(f"{dev.url}/healthz", headers={"origin": origin})
    assert answer.headers["access-control-allow-origin"] == origin
    assert {"x-request-id", "server-timing"} <= set(answer.headers["access-control-expose-headers"].split(", "))


def test_other_origins_get_no_cors(dev: DevServer) -> None:
    preflight = httpx.options(
        f"{dev.url}/api/v1/chat/stream",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def _text(browser: WebDriver, element_id: str) -> str:
    return element_text(browser, element_id)


def _mock_record(dev: DevServer, request_id: str) -> dict[str, Any]:
    """What the dev server's mock upstream recorded about the request (`/mock/requests/{id}`)."""
    upstream = dev.wait_for_output("-> openai-mock (openai)").split()[-1].removesuffix("/v1")
    record: dict[str, Any] = httpx.get(f"{upstream}/mock/requests/{request_id}").json()
    return record


def test_stream_then_stop_in_chromium(dev: DevServer, browser: WebDriver) -> None:
    from selenium.webdriver.common.by import By

    # GIVEN the demo page, its key filled in by the dev server
    browser.get(f"{dev.url}/")
    assert browser.find_element(By.ID, "key").get_attribute("value") == dev.key
    # WHEN a prompt is typed and sent
    browser.find_element(By.ID, "prompt").send_keys("Tell me about foxes")
    browser.find_element(By.ID, "send").click()
    # THEN tokens arrive while the stream still runs (no summary yet)
    wait_until(lambda: len(_text(browser, "output").split()) >= 8, "tokens on the page")
    assert _text(browser, "status") == "streaming" and _text(browser, "reason") == ""
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "demo-page-mid-stream.png"))
    shown = _text(browser, "output")
    # WHEN Stop is pressed
    browser.find_element(By.ID, "stop").click()
    # THEN the page shows client_cancelled, having stopped before the answer's end (400 tokens)
    wait_until(lambda: _text(browser, "reason") == "client_cancelled", "client_cancelled on the page")
    assert shown in _text(browser, "output") and len(_text(browser, "output").split()) < 400
    assert browser.save_screenshot(str(ARTIFACTS / "demo-page-stopped.png"))
    # AND the upstream request was closed before it completed
    request_id = _text(browser, "request-id")
    assert request_id.startswith("req_")

    def closed() -> dict[str, Any] | None:
        record = _mock_record(dev, request_id)
        return record if record.get("disconnected_at") else None

    record = wait_until(closed, "upstream closed")
    assert record["completed"] is False and record["chunks_sent"] < 400


def test_a_finished_stream_shows_its_summary_in_chromium(dev: DevServer, browser: WebDriver) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{dev.url}/")
    extra = browser.find_element(By.ID, "extra")
    extra.clear()
    extra.send_keys('{"mock": {"tokens": 5, "chunk_delay_ms": 1, "ttft_ms": 5}}')
    browser.find_element(By.ID, "prompt").send_keys("Hi")
    browser.find_element(By.ID, "send").click()
    wait_until(lambda: _text(browser, "status") == "done", "the stream done")
    assert _text(browser, "output") == "The quick brown fox jumps"
    assert _text(browser, "reason") == "stop"
    assert _text(browser, "tokens").endswith("+ 5") and _text(browser, "cost").startswith("0.0")
    assert _text(browser, "ttft").endswith(" ms") and _text(browser, "client-ttft").endswith(" ms")
    assert _text(browser, "tpot").endswith(" ms") and _text(browser, "redactions") == "(gate off)"


def test_the_browser_client_shows_a_redacted_answer_in_chromium(browser: WebDriver) -> None:
    import json

    from selenium.webdriver.common.by import By

    from tests.integration.test_sanitize_relay import ANSWER, EXPECTED

    # GIVEN `make dev` with the compliance gate redacting, and an answer whose values arrive 3 characters a chunk
    with dev_server(RELAY_DEV_KEY="lr-demo-sanitize-key", RELAY_SANITIZE="redact") as dev:
        browser.get(f"{dev.url}/")
        extra = browser.find_element(By.ID, "extra")
        extra.clear()
        mock = {"text": ANSWER, "chunk_chars": 3, "chunk_delay_ms": 1, "ttft_ms": 5}
        extra.send_keys(json.dumps({"mock": mock}))
        # WHEN the page streams it through the browser client (NDJSON)
        browser.find_element(By.ID, "prompt").send_keys("Hi")
        browser.find_element(By.ID, "send").click()
        wait_until(lambda: _text(browser, "status") == "done", "the stream done")
        # THEN the page shows exactly the redacted answer, and none of the values
        assert _text(browser, "output") == EXPECTED
        assert "jane.roe" not in browser.page_source and _text(browser, "reason") == "stop"
        # AND the summary's redaction counts, beside the relay's and the client's timings
        redactions = _text(browser, "redactions")
        for kind in ("EMAIL 1", "PHONE_NUMBER 1", "CREDIT_CARD 1", "IP_ADDRESS 1"):
            assert kind in redactions
        assert _text(browser, "client-ttft").endswith(" ms") and _text(browser, "client-tpot").endswith(" ms")
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "demo-page-redacted.png"))

"""The browser client and its renderer in headless Chromium against `make dev`'s entry point, its mock upstream
streaming a 20,000-character markdown document fast (4 characters a chunk, 1 ms apart), through the page script
of llm_relay_dev.browser: the whole answer shows, as the same markdown-it + DOMPurify render it in one piece, and
the work stays linear in the answer (at most one render a frame; a render is given the open block, never the whole
answer). What that work costs in frames and long tasks is timing, which a loaded machine would fail by luck:
`make bench-browser` measures it, against a naive consumer (bench/browser_rendering.py). Then what a user sees in
the demo page: model output that tries to inject HTML stays text, and Stop, a retried 503 and a client timeout each
end in their visible state."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from llm_relay_dev.browser import stream_markdown
from llm_relay_dev.mock_markdown import markdown_document
from tests.integration.browser_support import chromium, element_text
from tests.integration.devserver_support import DevServer, dev_server
from tests.waiting import wait_until

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

RENDERER_TESTS = Path(__file__).resolve().parents[2] / "clients" / "browser" / "renderer.test.mjs"
CHARS = 20_000
# The longest source one render may be given: the document's blocks (a table, a code fence) are 400 to 600
# characters; a consumer that renders the whole answer gives it the whole 20,000.
LONGEST_RENDER = 2_000
UNBATCHED = {"chunkThrottle": 0, "worker": False}


def test_the_renderers_node_tests_pass() -> None:
    """Its pure parts (grapheme hold-back, block splitting, batching on a fake clock) need no browser."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js here: install Node.js 18+ to run the renderer's tests")
    run = subprocess.run([node, "--test", str(RENDERER_TESTS)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(scope="module")
def dev() -> Iterator[DevServer]:
    with dev_server(RELAY_DEV_KEY="lr-browser-rendering-key") as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        driver.set_script_timeout(120)
        yield driver


def test_a_long_markdown_answer_renders_completely_with_linear_work(dev: DevServer, browser: WebDriver) -> None:
    # GIVEN the demo page (its modules loaded) and the mock streaming a markdown document in 5,000 chunks
    browser.get(f"{dev.url}/")
    document = markdown_document(CHARS)
    mock = {"markdown": CHARS, "chunk_chars": 4, "chunk_delay_ms": 1, "ttft_ms": 5}
    # WHEN the browser client hands the renderer every token as it arrives (no delivery batches of its own, no
    # worker: the renderer alone must keep its renders to one a frame)
    result = stream_markdown(browser, dev.key, "renderer", document, mock, client_options=UNBATCHED)
    # THEN the whole answer arrived and shows as the whole document rendered in one piece
    assert result["termination"] == "stop" and result["received"] == document
    assert result["text"] == result["referenceText"] and result["html"] == result["referenceHtml"]
    # AND it rendered at most once a frame (or once per 50 pieces buffered between frames), plus the final render,
    # for thousands of tokens pushed
    assert result["pushes"] >= CHARS // 4 // 2, result  # a token a push (the mock sends 5,000; some coalesce)
    assert result["shows"] <= result["framesWhileStreaming"] + result["pushes"] // 50 + 2, result
    # AND no render was given more than an open block: the work per frame does not grow with the answer
    assert result["longestRender"] <= LONGEST_RENDER, result


def _send(browser: WebDriver, mock: dict[str, Any], client: dict[str, Any] | None = None) -> None:
    from selenium.webdriver.common.by import By

    for element_id, value in (("extra", {"mock": mock}), ("client-options", client)):
        if value is not None:
            field = browser.find_element(By.ID, element_id)
            field.clear()
            field.send_keys(json.dumps(value))
    browser.find_element(By.ID, "prompt").send_keys("Hi")
    browser.find_element(By.ID, "send").click()


def _state(browser: WebDriver) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, "output").get_attribute("data-state") or ""


def test_model_output_cannot_inject_html_or_script(dev: DevServer, browser: WebDriver) -> None:
    from selenium.webdriver.common.by import By

    # GIVEN an answer whose text carries an image with an onerror handler, a script block and a javascript: link
    text = (
        "Look: <img src=x onerror=window.pwned=1> here.\n\n<script>window.pwned=1</script>\n\n"
        "[click me](javascript:window.pwned=1)\n\n```html\n<img src=x onerror=window.pwned=1>\n```\n"
    )
    browser.get(f"{dev.url}/")
    # WHEN the demo page streams and renders it, 3 characters a chunk
    _send(browser, {"text": text, "chunk_chars": 3, "chunk_delay_ms": 1, "ttft_ms": 5})
    wait_until(lambda: element_text(browser, "status") == "done", "the stream done")
    # THEN both show as text, nothing ran, and no element came from the model's markup
    shown = element_text(browser, "output")
    assert "<img src=x onerror=window.pwned=1>" in shown and "<script>window.pwned=1</script>" in shown
    assert browser.execute_script("return window.pwned === undefined")
    output = browser.find_element(By.ID, "output")
    assert not output.find_elements(By.CSS_SELECTOR, "img, script")
    assert all(
        not (a.get_attribute("href") or "").startswith("javascript:") for a in output.find_elements(By.TAG_NAME, "a")
    )


def test_stop_ends_in_the_stopped_state(dev: DevServer, browser: WebDriver) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{dev.url}/")
    _send(browser, {"markdown": 20_000, "chunk_chars": 5, "chunk_delay_ms": 5, "ttft_ms": 5})
    wait_until(lambda: "Section 1" in element_text(browser, "output"), "markdown on the page")
    browser.find_element(By.ID, "stop").click()
    wait_until(lambda: element_text(browser, "status") == "stopped", "the page stopped")
    assert element_text(browser, "reason") == "client_cancelled" and _state(browser) == "stopped"
    assert "Section 1" in element_text(browser, "output") and "Section 19" not in element_text(browser, "output")


def test_a_503_before_the_first_byte_is_retried_by_the_client(dev: DevServer, browser: WebDriver) -> None:
    # GIVEN an upstream that fails 3 attempts (the relay's own first try and 2 retries: the client gets a 5xx)
    browser.get(f"{dev.url}/")
    mock = {"fail_first": 3, "id": f"retry-{uuid.uuid4()}", "tokens": 5, "chunk_delay_ms": 1, "ttft_ms": 5}
    # WHEN the page streams with the client's default retries (fast backoff)
    _send(browser, mock, {"retryAttempts": 2, "retryDelay": 20})
    # THEN the answer arrives on the client's second attempt
    wait_until(lambda: element_text(browser, "status") == "done", "the stream done")
    assert element_text(browser, "output") == "The quick brown fox jumps" and element_text(browser, "retries") == "1"


def test_without_retries_the_fallback_offers_a_retry_that_succeeds(dev: DevServer, browser: WebDriver) -> None:
    from selenium.webdriver.common.by import By

    # GIVEN the same failing upstream and a client that does not retry by itself
    browser.get(f"{dev.url}/")
    mock = {"fail_first": 3, "id": f"retry-{uuid.uuid4()}", "tokens": 5, "chunk_delay_ms": 1, "ttft_ms": 5}
    _send(browser, mock, {"retryAttempts": 0})
    # THEN the page shows the fallback state with a retry button
    wait_until(lambda: _state(browser) == "failed", "the fallback state")
    assert element_text(browser, "status").startswith("error:")
    # WHEN Retry is pressed, THEN the answer arrives
    browser.find_element(By.CSS_SELECTOR, "#output .llm-relay-fallback button").click()
    wait_until(lambda: element_text(browser, "status") == "done", "the retried stream done")
    assert element_text(browser, "output") == "The quick brown fox jumps" and _state(browser) == "done"


def test_a_stalled_upstream_ends_in_the_timeout_fallback(dev: DevServer, browser: WebDriver) -> None:
    # GIVEN an upstream that stops sending after 5 tokens, and a client timeout of 1.5 s
    browser.get(f"{dev.url}/")
    _send(browser, {"tokens": 50, "stall_after": 5, "chunk_delay_ms": 1, "ttft_ms": 5}, {"timeout": 1500})
    # THEN the page keeps the 5 tokens and shows the fallback state, its reason `timeout`
    wait_until(lambda: _state(browser) == "failed", "the fallback state")
    assert element_text(browser, "reason") == "timeout"
    assert element_text(browser, "output").startswith("The quick brown fox jumps")

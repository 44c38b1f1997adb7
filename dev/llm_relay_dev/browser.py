"""Headless Chromium driven by Selenium (Debian's `chromium` and `chromium-driver`), for the browser tests and the
rendering benchmark, and the page script both run in the demo page to stream a markdown answer through one
consumer (browser_rendering_harness.js)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
RENDERING_HARNESS = Path(__file__).with_name("browser_rendering_harness.js").read_text(encoding="utf-8")


class BrowserMissing(RuntimeError):
    """Chromium or its driver is not installed here."""


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """A headless Chromium, quit on exit. Raises BrowserMissing, saying what to install, where one is missing."""
    if BROWSER is None or DRIVER is None:
        raise BrowserMissing("no Chromium here: install Debian's chromium and chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def stream_markdown(
    browser: WebDriver,
    key: str,
    consumer: str,
    document: str,
    mock: dict[str, Any],
    cap_ms: int = 0,
    client_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stream the mock's markdown `document` (asked for with `mock`) through one consumer ("renderer": the browser
    client + renderer.js; "naive": every token re-renders the whole answer) in the demo page `browser` shows, and
    return what the harness measured. `cap_ms` > 0 cancels the stream after that long; `client_options` are the
    renderer's client's (default: the client's defaults)."""
    args = {"consumer": consumer, "key": key, "mock": mock, "document": document, "capMs": cap_ms}
    if client_options is not None:
        args["clientOptions"] = client_options
    result: dict[str, Any] = browser.execute_async_script(RENDERING_HARNESS, args)
    if "error" in result:
        raise RuntimeError(f"the rendering harness failed: {result['error']}")
    return result

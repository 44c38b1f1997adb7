"""Headless Chromium for the browser tests (llm_relay_dev.browser); a test that asks for one skips, saying what to
install, where Chromium or its driver is missing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

from llm_relay_dev import browser

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """A headless Chromium, quit on exit; skips the test where Chromium or its driver is missing."""
    try:
        with browser.chromium() as driver:
            yield driver
    except browser.BrowserMissing as missing:
        pytest.skip(str(missing))


def element_text(browser: WebDriver, element_id: str) -> str:
    """The visible text of the element with that id."""
    from selenium.webdriver.common.by import By

    text: str = browser.find_element(By.ID, element_id).text
    return text

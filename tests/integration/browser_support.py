"""Headless Chromium for the browser tests: Debian's `chromium` and `chromium-driver` driven by Selenium; a test
that asks for one skips, saying what to install, where they are missing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """A headless Chromium, quit on exit; skips the test where Chromium or its driver is missing."""
    if BROWSER is None or DRIVER is None:
        pytest.skip("no Chromium here: install Debian's chromium and chromium-driver (.ci/run does) to run this test")
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


def element_text(browser: WebDriver, element_id: str) -> str:
    """The visible text of the element with that id."""
    from selenium.webdriver.common.by import By

    text: str = browser.find_element(By.ID, element_id).text
    return text

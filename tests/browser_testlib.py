"""Debian's Chromium driven by Selenium, for the tests that need a real browser (the console,
a pod's JupyterLab).

Skipped with the reason when Selenium, chromium or chromedriver is missing, except in CI
(CRUCIBLE_REQUIRE_BROWSER=1, or CRUCIBLE_REQUIRE_POSTGRES=1 which .ci/run sets), where that
is a failure: `./scripts/setup dev` installs them (apt, as root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = "1" in (
    os.environ.get("CRUCIBLE_REQUIRE_BROWSER"),
    os.environ.get("CRUCIBLE_REQUIRE_POSTGRES"),
)


def browser_or_skip() -> tuple[Any, str, str]:
    """Selenium's webdriver module, the chromium binary and chromedriver (or a skip)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium.webdriver as webdriver
    except ImportError:
        webdriver = None
    missing = [
        what
        for what, found in (
            ("selenium", webdriver),
            ("chromium", chromium),
            ("chromedriver", driver),
        )
        if not found
    ]
    if missing:
        why = f"the browser tests need {', '.join(missing)} (./scripts/setup dev installs them)"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    assert chromium and driver
    return webdriver, chromium, driver


@contextlib.contextmanager
def headless_chromium(profile: Path, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium (a fresh profile in ``profile``) that records the console's
    messages; quit on the way out."""
    webdriver, chromium, driver_path = browser_or_skip()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_path), options=options)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()

"""The console in a real browser (Debian's Chromium driven by Selenium) against a real
exchange: server and agent as subprocesses, the example app running in containers.

Signs in, runs examples/hello.py, sees its calls and a call's timeline, follows logs as new
lines arrive (some of them hostile markup), changes a host's price and sees the book change,
sees the bill, checks an app name and a host name full of markup run nothing, and fails on
any browser console error. Screenshots of each page go to $CRUCIBLE_ARTIFACTS (default
tests/artifacts/console/).

Skipped with the reason when Selenium, chromium or chromedriver is missing, except in CI
(CRUCIBLE_REQUIRE_BROWSER=1, or CRUCIBLE_REQUIRE_POSTGRES=1 which .ci/run sets), where
that is a failure: `./scripts/setup dev` installs them (apt, as root).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, update

from browser_testlib import headless_chromium
from crucible.sdk._client import Client
from crucible.server.store.tables import apps, hosts

from harness import Exchange

ROOT = Path(__file__).resolve().parents[2]
XSS_APP = "<script>alert('app')</script>"
XSS_HOST = '"><img src=x onerror=alert(1)>'
XSS_LINE = "<script>alert('log')</script> \"><img src=x onerror=alert(2)>"


# Elements that stick out past the right edge of the window (outside scrollable boxes).
WIDER_THAN_SCREEN = """
const limit = document.documentElement.clientWidth + 1;
const out = [];
for (const el of document.querySelectorAll("body *")) {
  if (el.closest(".scroll, .logs, pre")) continue;
  const r = el.getBoundingClientRect();
  if (r.right > limit) out.push(el.tagName + "." + el.className + " " + Math.round(r.right));
}
return out.slice(0, 5);
"""


def _artifacts() -> Path:
    out = Path(os.environ.get("CRUCIBLE_ARTIFACTS") or ROOT / "tests" / "artifacts") / "console"
    out.mkdir(parents=True, exist_ok=True)
    return out


class Page:
    """The browser, with the checks every step makes: no console error, no alert."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        self.d = driver
        self.base = base
        self.shots = shots

    def open(self, path: str) -> None:
        self.d.get(self.base + path)
        self.settle()

    def settle(self) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.d, 15).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        self.check()

    def check(self) -> None:
        from selenium.common.exceptions import NoAlertPresentException

        try:
            text = self.d.switch_to.alert.text
        except NoAlertPresentException:
            text = None
        assert text is None, f"a script ran: alert({text!r})"
        errors = [e for e in self.d.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, f"browser console errors: {errors}"

    def text(self) -> str:
        return str(self.d.find_element("tag name", "body").text)

    def wait_url(self, part: str, timeout_s: float = 30) -> None:
        """Until the browser is at a URL holding ``part`` (a click's navigation may still be
        on its way when the old page's readyState is complete)."""
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.d, timeout_s).until(lambda d: part in d.current_url)

    def wait_url_not(self, part: str, timeout_s: float = 30) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.d, timeout_s).until(lambda d: part not in d.current_url)

    def wait_text(self, needle: str, timeout_s: float = 30) -> None:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # The body read may be the old page's, gone mid-read when a navigation lands.
        WebDriverWait(self.d, timeout_s, ignored_exceptions=[StaleElementReferenceException]).until(
            lambda d: needle in self.text()
        )
        self.check()

    def shot(self, name: str) -> None:
        self.d.save_screenshot(str(self.shots / f"{name}.png"))

    def follow(self, element: Any) -> None:
        """Click ``element`` and wait for the page it leads to: the old document must go
        first (right after a click, the old page's readyState is still complete)."""
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        old = self.d.find_element("tag name", "html")
        element.click()
        WebDriverWait(self.d, 30).until(expected_conditions.staleness_of(old))
        self.settle()

    def click_link(self, text: str) -> None:
        self.follow(self.d.find_element("partial link text", text))


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Callable[[str], Page]]:
    with headless_chromium(tmp_path / "chromium") as drv:
        yield lambda base: Page(drv, base, _artifacts())


@pytest.fixture
def gpu_exchange(tmp_path: Path) -> Iterator[Exchange]:
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    ex.start_server()
    try:
        ex.start_agent("host-a", fake_gpus="1xH100")
        yield ex
    finally:
        ex.close()


def test_console_in_a_browser(
    gpu_exchange: Exchange, page: Callable[[str], Page], monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = gpu_exchange
    token = (ex.home / "admin-token").read_text().strip()
    client = Client(ex.url, token)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import app_console
    import hello

    p = page(ex.url)
    # -- sign in ---------------------------------------------------------------------------
    p.open("/")
    assert "/login" in p.d.current_url
    p.shot("01-login")
    p.d.find_element("id", "token").send_keys(token)
    p.follow(p.d.find_element("css selector", "form button[type=submit]"))
    p.wait_url_not("/login")
    assert p.d.current_url.rstrip("/") == ex.url
    assert "Apps" in p.text()
    # Keyboard: the first Tab reaches the skip link.
    from selenium.webdriver.common.keys import Keys

    p.d.find_element("tag name", "body").send_keys(Keys.TAB)
    assert p.d.switch_to.active_element.text == "Skip to content"

    # -- run the example app; see its calls and one call's timeline --------------------------
    with hello.app.run(client=client):
        assert hello.square.remote(7) == 49
        assert sum(hello.square.map(range(20))) == sum(x * x for x in range(20))
        p.open("/")
        p.click_link("hello")
        p.wait_text("square")
        p.shot("02-app")
        p.click_link("Calls")
        p.wait_text("succeeded")
        p.shot("03-calls")
        p.follow(p.d.find_element("css selector", "tbody a[href^='/calls/ca-']"))
        p.wait_text("Timeline")
        assert "running" in p.text()
        p.shot("04-call-timeline")

    # -- logs follow live, and hostile lines stay text -------------------------------------
    with app_console.app.run(client=client):
        first = f"hello from the browser test {uuid.uuid4().hex[:6]}"
        app_console.say.remote(first)
        p.open("/")
        p.click_link("console-demo")
        p.click_link("Logs")
        p.wait_text(first)
        later = f"a later line {uuid.uuid4().hex[:6]}"
        app_console.say.remote(later)  # arrives while the page is open
        p.wait_text(later)
        app_console.say.remote(XSS_LINE)
        p.wait_text("<script>alert('log')</script>")
        assert not p.d.find_elements("css selector", ".logs img, .logs script")
        p.shot("05-logs")
        app_id = client.transport.get("/v1/apps")[0]["id"]

    # -- a hostile app name and host name ----------------------------------------------------
    engine = create_engine(ex.database_url)
    with engine.begin() as conn:
        conn.execute(update(apps).where(apps.c.id == app_id).values(name=XSS_APP))
    engine.dispose()
    # The API refuses such a host name now; a store written before that may still hold one.
    ex.admin.post(
        "/v1/hosts/register",
        {"name": "xss-host", "inventory": {"cpu_cores": 2, "memory_mib": 1024, "disk_mib": 0}},
    )
    engine = create_engine(ex.database_url)
    with engine.begin() as conn:
        conn.execute(update(hosts).where(hosts.c.name == "xss-host").values(name=XSS_HOST))
    engine.dispose()
    for path in ("/", f"/apps/{app_id}", "/admin"):
        p.open(path)
        assert not p.d.find_elements("css selector", "main img, main script")
    assert XSS_HOST in p.text()

    # -- change a host's price; the book changes -------------------------------------------
    p.open("/hosts")
    p.click_link("host-a")
    host_id = p.d.current_url.rsplit("/", 1)[1]
    p.shot("06-host")
    price = p.d.find_element("id", "od-H100")
    price.clear()
    price.send_keys("4.75")
    p.follow(p.d.find_element("css selector", "form[aria-label='Prices of H100'] button"))
    p.wait_text("Saved the prices of H100")
    p.open("/market?gpu=H100")
    p.wait_text("$4.75")
    # A lease at the new price: the clearing-price chart gets its point.
    with app_console.app.run(client=client):
        assert app_console.on_gpu.remote().startswith("ct-")
    p.open("/market?gpu=H100")
    assert p.d.find_elements("css selector", "svg.chart circle.dot")
    assert "$4.75" in p.d.find_element("css selector", "svg.chart circle.dot title").get_attribute(
        "textContent"
    )
    p.shot("07-market")

    # -- the bill ---------------------------------------------------------------------------
    deadline = time.monotonic() + 30
    while True:  # metering runs every second (FAST settings); wait for the first charge
        p.open("/bill")
        if "square" in p.text() or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "square" in p.text()
    p.shot("08-bill")
    p.open("/admin")
    p.shot("09-operator")

    # -- a phone's width: nothing wider than the screen -------------------------------------
    p.d.set_window_size(390, 844)
    for path in ("/", "/calls", "/bill", "/market", f"/hosts/{host_id}"):
        p.open(path)
        p.shot("10-phone" + path.replace("/", "-").rstrip("-"))
        wide = p.d.execute_script(WIDER_THAN_SCREEN)
        assert not wide, (path, wide)

    # -- sign out ---------------------------------------------------------------------------
    p.d.set_window_size(1280, 900)
    p.open("/")
    p.d.find_element("css selector", "form.signout button").click()
    p.wait_url("/login")
    p.open("/bill")
    p.wait_url("/login")
    client.transport.close()

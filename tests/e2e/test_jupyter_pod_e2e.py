"""examples/jupyter_pod.py end to end: JupyterLab in a pod (real server, agent and worker
processes, ``process`` runtime), served under the pod's URL ``/pods/{pod}/ports/{port}/``.

- In a real browser (Debian's Chromium, Selenium): the pod's secret link opens JupyterLab,
  which renders; a notebook's cell runs ``print(6 * 7)`` and shows ``42``. Every resource
  the page loaded came from under the pod's URL, and the page's scripts cannot read the
  link's key (its cookie is HttpOnly) but can read Jupyter's ``_xsrf``.
- With ``CRUCIBLE_PORTS_DOMAIN=ports.localhost``, in the same browser: the link opens
  JupyterLab on the port's own origin ``{pod}-{port}.ports.localhost`` and a cell runs; the
  page's ``fetch('/v1/...')`` reaches the pod, not the API, and it cannot read the console
  on the exchange's origin although the browser holds a console session.
- Without a browser: the page's HTML, then every asset it references, answer 200 through
  the URL; a kernel started over REST (with Jupyter's XSRF check on, as a browser passes
  it) runs a cell over its WebSocket.

The browser part skips with the reason when Chromium, chromedriver or Selenium is missing
(except in CI: tests/browser_testlib.py); the whole test needs ``jupyterlab`` and
``ipykernel`` in this Python (the ``dev`` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

import crucible
from browser_testlib import headless_chromium
from crucible.testing import free_port, wait_for

from harness import Exchange

pytest.importorskip("jupyterlab")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[2]
# The JupyterLab workspace's pieces, by CSS selector.
LAUNCHER_NOTEBOOK = '.jp-LauncherCard[data-category="Notebook"]'
CELL_EDITOR = ".jp-Notebook .jp-Cell .cm-content"
OUTPUT = ".jp-Notebook .jp-OutputArea-output"
STATUS_BAR = "jp-main-statusbar"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("jupyter_pod", ROOT / "examples/jupyter_pod.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exchange, str, Any, int]]:
    """The exchange, the owner's token, and a running pod serving JupyterLab the way
    examples/jupyter_pod.py does (on a free port: the process runtime shares the host's
    network)."""
    yield from _notebook(tmp_path_factory.mktemp("jupyter-pod"))


@pytest.fixture(scope="module")
def notebook_on_host(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Exchange, str, Any, int]]:
    """The same, on an exchange with ``CRUCIBLE_PORTS_DOMAIN=ports.localhost``: the port
    on its own origin, ``{pod}-{port}.ports.localhost``."""
    yield from _notebook(tmp_path_factory.mktemp("jupyter-pod-host"), PORTS_DOMAIN)


PORTS_DOMAIN = "ports.localhost"


def _notebook(root: Path, domain: str = "") -> Iterator[tuple[Exchange, str, Any, int]]:
    env = {"CRUCIBLE_PORTS_DOMAIN": domain} if domain else {}
    ex = Exchange(root, f"sqlite:///{root / 'store.db'}", **env)
    ex.start_server()
    try:
        ex.start_agent("host-a")
        token = ex.owner_token("owner")
        client = ex.client(token)
        port = free_port()
        pod = crucible.Pod.create(
            "notebook",
            command=_example().jupyter_command(port, python=sys.executable),
            ports=[f"{port}/http"],
            client=client,
        )
        assert pod.wait("running", "failed", timeout_s=120).state == "running", pod.info()
        auth = {"Authorization": f"Bearer {token}"}
        if domain:  # the ports host, named in Host (Python does not resolve *.localhost)
            auth["Host"] = f"{pod.id}-{port}.{domain}:{ex.url.rsplit(':', 1)[1]}"
        status = ex.url + f"/pods/{pod.id}/ports/{port}/api/status"

        def serving() -> bool:
            if pod.info().state != "running":
                raise AssertionError(_logs(pod))
            try:
                r = httpx.get(status, headers=auth, timeout=30)
            except httpx.HTTPError:
                return False
            return r.status_code == 200

        try:
            wait_for(serving, timeout_s=60, what="JupyterLab in the pod")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {_logs(pod)}") from None
        yield ex, token, pod, port
        pod.delete()
    finally:
        ex.close()


@pytest.mark.timeout(300)
def test_the_page_its_assets_and_a_kernel_through_the_pod_url(
    notebook: tuple[Exchange, str, Any, int],
) -> None:
    from websockets.sync.client import connect

    ex, token, pod, port = notebook
    prefix = f"/pods/{pod.id}/ports/{port}/"
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {token}"}) as web:
        page = web.get(ex.url + prefix + "lab")
        assert page.status_code == 200 and "<html" in page.text.lower(), page.text[:500]
        assets = set(re.findall(r'(?:src|href)="(/[^"]+)"', page.text))
        assert assets, "the page references no assets"
        for asset in sorted(assets):
            assert asset.startswith(prefix), f"{asset} is outside {prefix}"
            r = web.get(ex.url + asset)
            assert r.status_code == 200, (asset, r.status_code)
        # Jupyter's XSRF check is on: a POST carries its cookie's value, as a browser does.
        xsrf = web.cookies.get("_xsrf")
        assert xsrf, "Jupyter's _xsrf cookie did not come through"
        refused = web.post(ex.url + prefix + "api/kernels", json={"name": "python3"})
        assert refused.status_code == 403  # no X-XSRFToken: Jupyter's own check refuses
        kernel = web.post(
            ex.url + prefix + "api/kernels",
            json={"name": "python3"},
            headers={"X-XSRFToken": xsrf},
        )
        assert kernel.status_code == 201, kernel.text
        kernel_id = kernel.json()["id"]
        try:
            url = ex.url.replace("http", "ws") + f"{prefix}api/kernels/{kernel_id}/channels"
            auth = {"Authorization": f"Bearer {token}"}
            with connect(url, additional_headers=auth, open_timeout=60) as ws:
                msg_id = uuid.uuid4().hex
                ws.send(json.dumps(_execute(msg_id, "print(6 * 7)")))
                while True:  # the kernel's messages until our cell's output
                    reply = json.loads(ws.recv(timeout=120))
                    if (
                        reply.get("parent_header", {}).get("msg_id") == msg_id
                        and reply["msg_type"] == "stream"
                    ):
                        assert reply["content"]["text"] == "42\n"
                        break
        finally:
            web.delete(ex.url + prefix + f"api/kernels/{kernel_id}", headers={"X-XSRFToken": xsrf})


@pytest.mark.timeout(600)
def test_jupyterlab_opens_in_a_browser_and_runs_a_cell(
    notebook: tuple[Exchange, str, Any, int], tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    ex, _token, pod, port = notebook
    prefix = f"/pods/{pod.id}/ports/{port}/"
    with headless_chromium(tmp_path / "chromium") as d:
        wait = WebDriverWait(d, 240)
        d.get(pod.port_link(port))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, LAUNCHER_NOTEBOOK))
        assert d.current_url.startswith(ex.url + prefix + "lab"), d.current_url
        d.find_element(By.CSS_SELECTOR, LAUNCHER_NOTEBOOK).click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, CELL_EDITOR))
        # The kernel is up (and its WebSocket connected) once the status bar says Idle.
        wait.until(
            lambda d: "| Idle" in d.find_element(By.CSS_SELECTOR, ".jp-StatusBar-Widget").text
        )
        try:
            editor = wait.until(lambda d: _visible(d, CELL_EDITOR))
            ActionChains(d).click(editor).send_keys("print(6 * 7)").key_down(Keys.SHIFT).send_keys(
                Keys.ENTER
            ).key_up(Keys.SHIFT).perform()
            wait.until(
                lambda d: any(
                    o.text.strip() == "42" for o in d.find_elements(By.CSS_SELECTOR, OUTPUT)
                )
            )
            d.save_screenshot(str(_artifacts() / "jupyterlab.png"))
        except Exception as exc:
            d.save_screenshot(str(_artifacts() / "jupyterlab-failed.png"))
            raise AssertionError(f"{exc!r}; browser: {d.get_log('browser')}; {_logs(pod)}") from exc
        # Everything the page loaded came from under the pod's URL.
        loaded = d.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        outside = [u for u in loaded if u.startswith("http") and not u.startswith(ex.url + prefix)]
        assert not outside, outside
        # The link's key is out of the page's reach; Jupyter's own XSRF cookie is not.
        cookies = str(d.execute_script("return document.cookie"))
        assert "_xsrf=" in cookies and "crucible_port_key" not in cookies


@pytest.mark.timeout(600)
def test_jupyterlab_on_its_own_origin_in_a_browser(
    notebook_on_host: tuple[Exchange, str, Any, int], tmp_path: Path
) -> None:
    """With CRUCIBLE_PORTS_DOMAIN=ports.localhost (Chromium resolves *.localhost to
    loopback): the link opens JupyterLab on ``{pod}-{port}.ports.localhost``, a cell runs
    over its WebSocket there, and the page can reach neither the exchange's API on its own
    origin (the pod answers there) nor, cross-origin, the console."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    ex, token, pod, port = notebook_on_host
    origin = f"http://{pod.id}-{port}.{PORTS_DOMAIN}:{ex.url.rsplit(':', 1)[1]}"
    link = pod.port_link(port)
    assert link.startswith(origin + f"/pods/{pod.id}/ports/{port}/?crucible_key="), link
    with headless_chromium(tmp_path / "chromium") as d:
        # A console session in this browser first: the pod's page must not be able to use it.
        d.get(ex.url + "/login")
        d.find_element(By.ID, "token").send_keys(token)
        d.find_element(By.ID, "token").submit()
        WebDriverWait(d, 60).until(lambda d: "/login" not in d.current_url)
        assert any(c["name"] == "crucible_session" for c in d.get_cookies())
        wait = WebDriverWait(d, 240)
        d.get(link)
        try:
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, LAUNCHER_NOTEBOOK))
            assert d.current_url.startswith(origin + f"/pods/{pod.id}/ports/{port}/lab")
            d.find_element(By.CSS_SELECTOR, LAUNCHER_NOTEBOOK).click()
            wait.until(
                lambda d: "| Idle" in d.find_element(By.CSS_SELECTOR, ".jp-StatusBar-Widget").text
            )
            editor = wait.until(lambda d: _visible(d, CELL_EDITOR))
            ActionChains(d).click(editor).send_keys("print(6 * 7)").key_down(Keys.SHIFT).send_keys(
                Keys.ENTER
            ).key_up(Keys.SHIFT).perform()
            wait.until(
                lambda d: any(
                    o.text.strip() == "42" for o in d.find_elements(By.CSS_SELECTOR, OUTPUT)
                )
            )
            d.save_screenshot(str(_artifacts() / "jupyterlab-own-origin.png"))
        except Exception as exc:
            d.save_screenshot(str(_artifacts() / "jupyterlab-own-origin-failed.png"))
            raise AssertionError(f"{exc!r}; browser: {d.get_log('browser')}; {_logs(pod)}") from exc
        loaded = d.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        outside = [u for u in loaded if u.startswith("http") and not u.startswith(origin + "/")]
        assert not outside, outside
        assert "crucible_session" not in str(d.execute_script("return document.cookie"))
        # What a hostile page would try: the API by a relative URL (the pod answers, not the
        # exchange), and the console on the exchange's origin (the browser refuses to read).
        probe = d.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const out = {};
            fetch('/v1/accounts/me', {credentials: 'include'})
              .then(r => r.text().then(t => { out.api = [r.status, t.slice(0, 200)]; }))
              .catch(e => { out.api = ['error', String(e)]; })
              .then(() => fetch(arguments[0] + '/', {credentials: 'include'}))
              .then(r => r.text().then(t => { out.console = [r.status, t.slice(0, 200)]; }))
              .catch(e => { out.console = ['error', String(e)]; })
              .then(() => done(out));
            """,
            ex.url,
        )
        assert probe["api"][0] == 404 and '"ac-' not in probe["api"][1], probe
        assert probe["console"][0] == "error", probe  # cross-origin, no CORS: unreadable


def _visible(d: Any, selector: str) -> Any:
    """The first element of ``selector`` that is shown (None while there is none)."""
    from selenium.webdriver.common.by import By

    shown = [e for e in d.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()]
    return shown[0] if shown else None


def _artifacts() -> Path:
    out = Path(os.environ.get("CRUCIBLE_ARTIFACTS") or ROOT / "tests" / "artifacts") / "jupyter"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _logs(pod: Any) -> str:
    return (
        f"pod {pod.info().state}; it printed:\n"
        + "\n".join(line.line for line in pod.logs())[-3000:]
    )


def _execute(msg_id: str, code: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "test",
            "session": uuid.uuid4().hex,
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False},
        "channel": "shell",
    }

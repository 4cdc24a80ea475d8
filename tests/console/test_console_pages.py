"""The console in-process over real SQLite and PostgreSQL stores: sign-in and sessions, CSRF,
security headers, escaping, tenancy, pagination, and the price form changing the book."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from sqlalchemy import update

from crucible.protocol.accounts import Scope
from crucible.server.store.tables import apps, functions, hosts

from console_testlib import ConsoleClient, ServerUnderTest, csrf_of

Browser = Callable[[], ConsoleClient]

H100 = [{"index": 0, "model": "H100", "memory_mib": 81920, "uuid": "g0"}]
XSS_APP = "<script>alert('app')</script>"
XSS_HOST = '"><img src=x onerror=alert(1)>'
XSS_LINE = "<script>alert('log')</script> \"><img src=x onerror=alert(2)>"


def _world(server: ServerUnderTest, name: str = "acme", app: str = "demo") -> dict[str, str]:
    admin = server.tenant(name, Scope.ADMIN)
    host = server.tenant(name, Scope.HOST)
    host_id = server.register_host(host.token, f"{name}-host", gpus=H100)
    bundle = server.put_blob(admin.token)
    app_id = server.new_app(admin.token, app)
    fn = server.new_function(admin.token, app_id, bundle)
    call_ids = server.new_calls(admin.token, fn, 3)
    return {
        "token": admin.token,
        "token_id": admin.token_id,
        "host_id": host_id,
        "app_id": app_id,
        "function_id": fn,
        "call_id": call_ids[0],
    }


def _pages(w: dict[str, str]) -> list[str]:
    return [
        "/",
        f"/apps/{w['app_id']}",
        f"/apps/{w['app_id']}/logs",
        "/calls",
        f"/calls/{w['call_id']}",
        "/bill",
        "/bill/summary",
        "/hosts",
        f"/hosts/{w['host_id']}",
        "/market",
        "/admin",
    ]


def test_every_page_needs_a_session(server: ServerUnderTest, browser: Browser) -> None:
    w = _world(server)
    anon = browser()
    for path in _pages(w):
        r = anon.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next="), path
    stream = anon.get(f"/apps/{w['app_id']}/logs/stream")
    assert stream.status_code == 401
    assert anon.get("/static/console.js").status_code == 200  # static files are public
    # A bearer token is not a session: the console only takes its cookie.
    r = anon.get("/", headers={"authorization": f"Bearer {w['token']}"})
    assert r.status_code == 303


def test_sign_in_sets_a_safe_cookie_and_pages_render(
    server: ServerUnderTest, browser: Browser
) -> None:
    w = _world(server)
    me = browser()
    r = me.sign_in(w["token"])
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("crucible_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the HTTPS test
    assert w["token"] not in cookie  # the cookie never carries the API token
    for path in _pages(w):
        r = me.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert r.headers["content-type"].startswith("text/html")
    # The API never takes the console's cookie (a forged cross-site request gets nothing).
    assert me.get("/v1/apps").status_code == 401
    assert me.get("/v1/accounts/me").status_code == 401


def test_secure_cookie_over_https(server: ServerUnderTest) -> None:
    w = _world(server)
    me = ConsoleClient(server)
    me.client.base_url = "https://test"  # type: ignore[assignment]
    try:
        r = me.sign_in(w["token"])
        cookie = next(c for c in r.headers.get_list("set-cookie") if "crucible_session=" in c)
        assert "Secure" in cookie
    finally:
        me.close()


def test_wrong_tokens_are_refused_with_a_reason(server: ServerUnderTest, browser: Browser) -> None:
    w = _world(server)
    host = server.tenant("acme", Scope.HOST)
    me = browser()
    r = me.sign_in("cru_not-a-token")
    assert r.status_code == 401 and "not valid" in r.text
    # The token was pasted into the form: the API's hint (an environment variable) is wrong.
    assert "CRUCIBLE_TOKEN" not in r.text and "crucible token create" in r.text
    r = me.sign_in(host.token)
    assert r.status_code == 403 and "cannot sign in" in r.text
    r = me.sign_in("")
    assert r.status_code == 401 and "paste an API token" in r.text
    assert me.get("/").status_code == 303  # still signed out
    # The sign-in form itself is CSRF-checked (its token is bound to a cookie).
    other = browser()
    r = other.post("/login", {"csrf": "forged", "token": w["token"]})
    assert r.status_code == 403
    assert other.get("/").status_code == 303


def test_next_never_leaves_the_site(server: ServerUnderTest, browser: Browser) -> None:
    w = _world(server)
    me = browser()
    form = me.get("/login?next=//evil.example/x")
    assert "evil" not in form.text
    for target in ("//evil", "/\\evil", "/\t/evil", "https://evil", "javascript:alert(1)"):
        form = me.get("/login")
        r = me.post("/login", {"csrf": csrf_of(form.text), "token": w["token"], "next": target})
        assert r.headers["location"] == "/", target
        me.client.cookies.clear()
    form = me.get("/login")
    r = me.post("/login", {"csrf": csrf_of(form.text), "token": w["token"], "next": "/bill"})
    assert r.headers["location"] == "/bill"


def test_sign_out_and_revoking_the_token_end_sessions(
    server: ServerUnderTest, browser: Browser
) -> None:
    w = _world(server)
    me = browser()
    me.sign_in(w["token"])
    jar = dict(me.client.cookies)
    # A forged sign-out (no CSRF token) is refused and leaves the session alone.
    assert me.post("/logout", {"csrf": "nope"}).status_code == 403
    assert me.get("/").status_code == 200
    assert me.post("/logout", {"csrf": me.form_token()}).status_code == 303
    # The old cookie, replayed, no longer opens anything.
    replay = browser()
    replay.client.cookies.update(jar)
    assert replay.get("/").status_code == 303

    again = browser()
    again.sign_in(w["token"])
    assert again.get("/").status_code == 200
    server.ok("DELETE", f"/v1/tokens/{w['token_id']}?force=true", token=w["token"])
    assert again.get("/").status_code == 303
    assert again.get(f"/apps/{w['app_id']}/logs/stream").status_code == 401


def test_forms_need_the_session_csrf_token(server: ServerUnderTest, browser: Browser) -> None:
    w = _world(server)
    me = browser()
    me.sign_in(w["token"])
    prices = {"device_type": "H100", "on_demand": "3", "interruptible_min": "1", "reserved": "2"}
    for bad in ({}, {"csrf": ""}, {"csrf": "x" * 32}):
        r = me.post(f"/hosts/{w['host_id']}/offers", {**prices, **bad})
        assert r.status_code == 403, bad
        assert "security token" in r.text
    # Another session's token does not fit this session.
    other = browser()
    other.sign_in(server.tenant("acme", Scope.ADMIN).token)
    r = me.post(f"/hosts/{w['host_id']}/offers", {**prices, "csrf": other.form_token()})
    assert r.status_code == 403
    # A JSON body is not a form.
    r = me.server._loop.run_until_complete(
        me.client.post(f"/hosts/{w['host_id']}/offers", json={**prices, "csrf": me.form_token()})
    )
    assert r.status_code == 400


def test_security_headers_and_no_inline_script(server: ServerUnderTest, browser: Browser) -> None:
    w = _world(server)
    me = browser()
    r = me.get("/login")
    me.sign_in(w["token"])
    for path in ["/login", *_pages(w)]:
        r = me.get(path) if path != "/login" else r
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        # Every script is a file; no inline handlers or style attributes (the CSP refuses them).
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), path
        assert not re.search(r"\son[a-z]+=", r.text), path
        assert "style=" not in r.text, path


def test_names_and_log_lines_are_escaped(server: ServerUnderTest, browser: Browser) -> None:
    admin = server.tenant("acme", Scope.ADMIN)
    host = server.tenant("acme", Scope.HOST)
    host_id = server.register_host(host.token, "xss-host", gpus=H100)
    bundle = server.put_blob(admin.token)
    app_id = server.new_app(admin.token, "plain")
    fn = server.new_function(admin.token, app_id, bundle)
    # The API refuses such app names today; the store may hold them (older versions, other
    # writers), and the pages must stay safe regardless.
    with server.state.engine.begin() as conn:
        conn.execute(update(apps).where(apps.c.id == app_id).values(name=XSS_APP))
        # The API refuses such a host name now; a store written before may still hold one.
        conn.execute(update(hosts).where(hosts.c.id == host_id).values(name=XSS_HOST))
        conn.execute(update(functions).where(functions.c.id == fn).values(name=XSS_APP))
    call_id = server.new_calls(admin.token, fn, 1)[0]
    cid, ctoken = server.place_container(fn, host_id)
    sent = {"lines": [{"ts_ms": 1, "stream": "stdout", "call_id": call_id, "line": XSS_LINE}]}
    server.ok("POST", f"/v1/containers/{cid}/logs", token=ctoken, json=sent)
    me = browser()
    me.sign_in(admin.token)
    shown = {
        "/": XSS_APP,
        f"/apps/{app_id}": XSS_APP,
        f"/apps/{app_id}/logs": XSS_LINE,
        f"/apps/{app_id}/logs?call_id={call_id}": XSS_LINE,
        "/bill/summary": XSS_APP,
        "/calls": XSS_APP,  # the function's name
        "/hosts": XSS_HOST,
        f"/hosts/{host_id}": XSS_HOST,
        "/admin": XSS_HOST,
    }
    for path, text in shown.items():
        html = me.get(path).text
        assert "<script>alert" not in html, path
        assert "<img src=x" not in html, path
        assert "&lt;script&gt;" in html or "&lt;img" in html, (path, text)


def test_a_hosts_self_test_is_shown_in_words(server: ServerUnderTest, browser: Browser) -> None:
    """The verification's results were printed as Python's repr of dicts and lists."""
    admin = server.tenant("acme", Scope.ADMIN)
    result = {
        "kind": "gpu",
        "device_index": 0,
        "model": "H100",
        "figures": {"matmul_tflops": 612.5, "mem_bandwidth_gbs": 2900.0},
        "measured_ms": 1,
    }
    body = {
        "name": "tested",
        "inventory": {"cpu_cores": 8, "memory_mib": 16384, "disk_mib": 1024, "gpus": H100},
        "self_test": [result],
    }
    made = server.ok(
        "POST", "/v1/hosts/register", token=server.tenant("acme", Scope.HOST).token, json=body
    )
    me = browser()
    me.sign_in(admin.token)
    html = me.get(f"/hosts/{made['id']}").text
    assert "matmul tflops: 612.5" in html and "mem bandwidth gbs: 2900.0" in html, html
    assert "{&#39;" not in html and "[{" not in html and "{'" not in html


def test_a_builder_sees_only_their_account(server: ServerUnderTest, browser: Browser) -> None:
    a = _world(server, "acme", "acme-app")
    b = server.tenant("other", Scope.USER)
    me = browser()
    me.sign_in(b.token)
    for path in [
        f"/apps/{a['app_id']}",
        f"/apps/{a['app_id']}/logs",
        f"/apps/{a['app_id']}/logs/stream",
        f"/apps/{a['app_id']}/stream",
        f"/calls/{a['call_id']}",
        f"/hosts/{a['host_id']}",
    ]:
        assert me.get(path).status_code == 404, path
    for path in ["/", "/calls", "/bill", "/bill/summary", "/hosts"]:
        html = me.get(path).text
        assert a["app_id"] not in html and a["call_id"] not in html, path
        assert "acme-app" not in html and "acme-host" not in html, path
    # Filtering by another account's app finds nothing (the filter echoes only the id asked).
    html = me.get(f"/calls?app_id={a['app_id']}").text
    assert a["call_id"] not in html and "No calls match" in html
    assert me.get("/admin").status_code == 403
    prices = {"device_type": "H100", "on_demand": "9", "interruptible_min": "1", "reserved": "2"}
    r = me.post(f"/hosts/{a['host_id']}/offers", {**prices, "csrf": me.form_token()})
    assert r.status_code == 404


def test_calls_paginate_newest_first(server: ServerUnderTest, browser: Browser) -> None:
    w = _world(server)
    made = server.new_calls(w["token"], w["function_id"], 117)
    me = browser()
    me.sign_in(w["token"])
    seen: list[str] = []
    path: str | None = f"/calls?app_id={w['app_id']}"
    pages = 0
    while path:
        html = me.get(path.replace("&amp;", "&")).text
        ids = re.findall(r'<a href="/calls/(ca-[0-9a-z]+)"', html)
        seen += ids
        older = re.search(r'<a href="(/calls\?[^"]+)">Older calls', html)
        path = older.group(1) if older else None
        pages += 1
    assert pages == 3
    assert len(seen) == len(set(seen)) == 120
    assert seen[0] == made[-1]  # newest first
    # Filters read per-function index ranges, merged: the same calls, in the same order, as
    # the API's listing, across functions and pages.
    second = server.new_function(w["token"], w["app_id"], server.put_blob(w["token"]), name="g")
    server.new_calls(w["token"], second, 30)
    server.new_calls(w["token"], w["function_id"], 10)
    api = server.ok("GET", f"/v1/calls?app_id={w['app_id']}&limit=1000", token=w["token"])
    expected = [c["id"] for c in api["calls"]]
    for query in (f"app_id={w['app_id']}", "state=queued", f"app_id={w['app_id']}&state=queued"):
        got: list[str] = []
        path = f"/calls?{query}"
        while path:
            html = me.get(path.replace("&amp;", "&")).text
            got += re.findall(r'<a href="/calls/(ca-[0-9a-z]+)"', html)
            older = re.search(r'<a href="(/calls\?[^"]+)">Older calls', html)
            path = older.group(1) if older else None
        assert got == expected, query
    assert "No calls match" in me.get("/calls?state=failed").text
    # A malformed cursor is a clear 400, not a 500.
    r = me.get("/calls?before=yesterday")
    assert r.status_code == 400 and "before must be" in r.text


def test_price_form_changes_the_book(server: ServerUnderTest, browser: Browser) -> None:
    w = _world(server)
    me = browser()
    me.sign_in(w["token"])
    form = {
        "csrf": me.form_token(f"/hosts/{w['host_id']}"),
        "device_type": "H100",
        "on_demand": "7.125",
        "interruptible_min": "$1.50",
        "reserved": "5",
    }
    r = me.post(f"/hosts/{w['host_id']}/offers", form)
    assert r.status_code == 303
    assert "Saved the prices of H100" in me.get(r.headers["location"]).text
    offer = server.ok("GET", "/v1/market/hosts", token=w["token"])[0]["offers"][0]
    assert offer["on_demand_micros"] == 7_125_000 and offer["interruptible_min_micros"] == 1_500_000
    assert "$7.125" in me.get("/market?gpu=H100").text
    quote = me.get("/market?quote=H100&tier=on_demand").text
    assert "$7.125/GPU-hour" in quote
    # Bad prices are explained on the page and change nothing.
    for bad, why in [("abc", "not a price"), ("-1", "zero or more"), ("0.0000001", "six")]:
        r = me.post(f"/hosts/{w['host_id']}/offers", {**form, "on_demand": bad})
        assert r.status_code == 400 and why in r.text, bad
    r = me.post(f"/hosts/{w['host_id']}/offers", {**form, "device_type": "B200"})
    assert r.status_code == 400 and "has no &#39;B200&#39;" in r.text
    offer = server.ok("GET", "/v1/market/hosts", token=w["token"])[0]["offers"][0]
    assert offer["on_demand_micros"] == 7_125_000


@pytest.mark.parametrize(
    "path",
    [
        "/calls?state=nonsense",
        "/bill?range=year",
        "/bill?before=-3",
        "/market?quote=ZZZ999",
        "/market?quote=H100&nodes=0",
        "/market?quote=H100&bid=lots",
        "/market?gpu=bogus",
        # Digits that are not ASCII ("²" passes str.isdigit(), not int()): these were 500s.
        "/market?quote=H100&nodes=%C2%B2",
        "/calls?before=%C2%B2:ca-x",
        # Past what a store column holds: these were 500s (an integer overflow in SQLite).
        "/bill?before=99999999999999999999999",
        "/bill?before=9223372036854775808",
        "/calls?before=99999999999999999999999:ca-x",
        "/calls?before=9223372036854775808:x",
        "/apps/ap-missing",
        "/calls/ca-missing",
        "/hosts/ho-missing",
        "/static/../../secret",
        "/static/nope.js",
    ],
)
def test_bad_input_is_a_clear_4xx_page(
    server: ServerUnderTest, browser: Browser, path: str
) -> None:
    w = _world(server)
    me = browser()
    me.sign_in(w["token"])
    r = me.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code)


def test_a_browser_asking_for_a_path_no_page_has_gets_a_console_page(
    server: ServerUnderTest,
) -> None:
    """A console URL trimmed by hand (`/apps/`) or a method no page takes answered the
    API's JSON, without the console's headers (framing, caching)."""
    html = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    for method, path, status in (
        ("GET", "/apps/", 404),
        ("GET", "/no-such-page", 404),
        ("POST", "/calls", 405),
        ("DELETE", "/", 405),
    ):
        r = server.request(method, path, headers=html)
        assert r.status_code == status, (path, r.status_code)
        assert r.headers["content-type"].startswith("text/html"), (path, r.text)
        assert r.headers["x-frame-options"] == "DENY" and "no-store" in r.headers["cache-control"]
        if status == 405:
            assert "GET" in r.headers["allow"]
    # The API's clients and paths keep the API's JSON.
    assert server.request("GET", "/apps/").headers["content-type"] == "application/json"
    r = server.request("GET", "/v1/no-such-route", headers=html)
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"


def test_bidi_overrides_in_log_lines_show_as_escapes(
    server: ServerUnderTest, browser: Browser
) -> None:
    """A log line's right-to-left override reversed the rest of the line on the page (a file
    named "invoice\u202etxt.exe" showed as "invoiceexe.txt"); the CLI showed it escaped."""
    admin = server.tenant("acme", Scope.ADMIN)
    host_id = server.register_host(server.tenant("acme", Scope.HOST).token, "h", gpus=H100)
    app_id = server.new_app(admin.token, "plain")
    fn = server.new_function(admin.token, app_id, server.put_blob(admin.token))
    cid, ctoken = server.place_container(fn, host_id)
    line = "saved invoice\u202etxt.exe"
    sent = {"lines": [{"ts_ms": 1, "stream": "stdout", "line": line}]}
    server.ok("POST", f"/v1/containers/{cid}/logs", token=ctoken, json=sent)
    me = browser()
    me.sign_in(admin.token)
    html = me.get(f"/apps/{app_id}/logs").text
    assert "\u202e" not in html and "invoice\\u202etxt.exe" in html

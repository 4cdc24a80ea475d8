"""The console's app page links a deployed app's web endpoints where they are served: their
own host with the user-content domain set (api/web_origin.py), else their path URL."""

from __future__ import annotations

from collections.abc import Callable

from console_testlib import ConsoleClient, ServerUnderTest


def _deploy(server: ServerUnderTest, token: str) -> str:
    """The deployment ``site``: a web endpoint ``pub`` and a plain function; its app id."""
    started = server.ok("POST", "/v1/deployments", token=token, json={"name": "site"})
    bundle = server.put_blob(token)
    specs = [
        {
            "name": "pub",
            "code": {"bundle": bundle, "module": "m", "qualname": "pub"},
            "web": {"kind": "asgi_app", "method": "*", "public": True},
        },
        {"name": "plain", "code": {"bundle": bundle, "module": "m", "qualname": "plain"}},
    ]
    app_id = str(started["app_id"])
    server.ok("POST", f"/v1/apps/{app_id}/functions", token=token, json={"functions": specs})
    server.ok("POST", "/v1/deployments/site/activate", token=token, json={"app_id": app_id})
    return app_id


def test_the_app_page_links_each_web_endpoint(
    make_server: Callable[..., ServerUnderTest],
) -> None:
    for domain in ("", "user.localhost"):
        server = make_server(ports_domain=domain)
        owner = server.tenant("webby").token
        app_id = _deploy(server, owner)
        url = server.ok("GET", "/v1/deployments/site/functions/pub", token=owner)["web_url"]
        browser = ConsoleClient(server)
        try:
            assert browser.sign_in(owner).status_code == 303
            html = browser.get(f"/apps/{app_id}").text
        finally:
            browser.close()
        assert "Web endpoints" in html and f'href="{url}"' in html, html
        assert "plain:" not in html
        if domain:
            assert url.endswith(".user.localhost/") and "/web/" not in url
        else:
            assert url == "http://test/web/webby/site/pub/"

"""Web endpoints: serve a function over HTTP, as one route or as a whole ASGI app.

Run it:   crucible run examples/web_endpoints.py

It deploys the app as ``web-demo`` (web endpoints are served for deployments), sends a few
requests through the exchange's gateway at ``{server}/web/{account}/web-demo/{function}/``
with plain HTTP (each printed as a curl command), and stops the deployment at the end.
While you work on such an app, ``crucible serve examples/web_endpoints.py`` keeps it
deployed, redeploys on every change and prints the URLs. FastAPI must be importable in the
containers (it is, in the host's own environment, which is the default image).
"""

from plain_http import Exchange

import crucible

app = crucible.App("web-demo")


@app.function(timeout=60)
@crucible.fastapi_endpoint(method="GET")
def hello(name: str = "world") -> dict:
    """One route: its parameters are query parameters, as FastAPI reads them."""
    return {"hello": name}


@app.function(timeout=60)
@crucible.asgi_app(public=True)
def api():
    """A whole ASGI app, built once per container; every path under its URL goes to it.
    ``public=True``: no token needed."""
    from fastapi import FastAPI

    web = FastAPI()

    @web.get("/square/{x}")
    def square(x: int) -> dict:
        return {"x": x, "square": x * x}

    @web.post("/echo")
    def echo(body: dict) -> dict:
        return {"you sent": body}

    return web


@app.local_entrypoint()
def main():
    app.deploy()
    http = Exchange.from_environment()
    account = http.get("/v1/accounts/me")["name"]
    base = f"/web/{account}/web-demo"
    try:
        # Where each endpoint is served (its own host when the exchange has a domain for
        # user content, else its path on the exchange).
        print("api is served at", crucible.Function.from_name("web-demo", "api").get_web_url())
        print(http.get(f"{base}/hello/?name=Ada"))  # needs the account's token
        print(http.get(f"{base}/api/square/12", token=False))  # public
        print(http.post(f"{base}/api/echo", {"x": 1}, token=False))
        status, _ = http.request("GET", f"{base}/hello/", token=False)
        print("hello without a token:", status)  # 401: it is not public
    finally:
        http.post("/v1/deployments/web-demo/stop")

"""The client's list of routes it sends an Idempotency-Key with (protocol/transport._KEYED)
and of routes it never sends twice (_SENT_ONCE) is bound to the server's routes: every POST
the server serves is keyed on both sides, sent once, or named below with the reason a
second copy of it does no harm. A new POST route fails this test until someone decides which
(a route that makes something anew and is retried blindly made a second pod, app or
adapter when an answer was lost)."""

from __future__ import annotations

from pathlib import Path

from crucible.protocol.transport import _KEYED, _SENT_ONCE

from server_testlib import ServerUnderTest, concrete

# POST routes the client sends again after a connection failure without a key, and why a
# second copy changes nothing.
RETRIED_SAFELY = {
    "/v1/apps/{app_id}/functions": "registers by name: again replaces the spec with itself",
    "/v1/apps/{app_id}/functions/{name}/pools": "finds the parameters' pool, or makes it",
    "/v1/apps/{app_id}/heartbeat": "moves the app's heartbeat to now",
    "/v1/apps/{app_id}/secrets": "a second copy of the same values, ended with the app",
    "/v1/apps/{app_id}/stop": "stopping a stopped app answers it",
    "/v1/calls/{call_id}/cancel": "cancelling a cancelled call answers it",
    "/v1/clusters/{cluster}/start": "a started cluster answers itself",
    "/v1/clusters/{cluster}/stop": "a stopped cluster answers itself",
    "/v1/containers/{container_id}/exchange": "outputs carry their input's id; one is kept",
    "/v1/containers/{container_id}/items": "items carry their index; one is kept",
    "/v1/containers/{container_id}/logs": "log lines carry their sequence; a copy is dropped",
    "/v1/deployments/{name}/activate": "activating the current version answers it",
    "/v1/deployments/{name}/functions/{function}/pools": "finds the parameters' pool, or makes it",
    "/v1/deployments/{name}/rollback": "names the version it rolls back to",
    "/v1/deployments/{name}/stop": "stopping a stopped deployment answers it",
    "/v1/dicts": "get or create by name",
    "/v1/dicts/{name}/clear": "clearing twice leaves it empty",
    "/v1/dicts/{name}/get": "a read",
    "/v1/dicts/{name}/put": "the same value under the same key",
    "/v1/fine-tunes/{ft_id}/cancel": "cancelling a cancelled fine-tune answers it",
    "/v1/functions/{function_id}/calls": "each input carries its own idempotency_key",
    "/v1/groups/{group_id}/results": "a read",
    "/v1/hosts/register": "a host registers again as itself",
    "/v1/hosts/{host_id}/pod-disks": "the host's latest figures replace the last",
    "/v1/hosts/{host_id}/sync": "the host's state as it is now",
    "/v1/jobs/{job_id}/cancel": "cancelling a cancelled job answers it",
    "/v1/market/quote": "a read",
    "/v1/models/{name}/stop": "stopping a stopped model answers it",
    "/v1/pods/{pod}/start": "a started pod answers itself",
    "/v1/pods/{pod}/stop": "a stopped pod answers itself",
    "/v1/queues": "get or create by name",
    "/v1/queues/{name}/clear": "clearing twice leaves it empty",
    "/v1/secrets/rotate": "re-seals under the current key: again re-seals nothing new",
    "/v1/volumes": "get or create by name",
}


def _post_routes(tmp_path: Path) -> dict[str, bool]:
    """Each POST route's template, and whether the server takes an Idempotency-Key on it."""
    server = ServerUnderTest(tmp_path / "home", f"sqlite:///{tmp_path / 'store.db'}")
    try:
        spec = server.app.openapi()
    finally:
        server.close()
    routes: dict[str, bool] = {}
    for path, operations in spec["paths"].items():
        post = operations.get("post")
        if post is None:
            continue
        routes[path] = any(
            p.get("in") == "header" and p["name"].lower() == "idempotency-key"
            for p in post.get("parameters", [])
        )
    return routes


def test_every_post_route_is_keyed_sent_once_or_safe_to_repeat(tmp_path: Path) -> None:
    routes = _post_routes(tmp_path)
    assert len(routes) > 40  # the walk saw the API, not an empty schema
    for path, server_keyed in routes.items():
        sample = concrete(path)
        client_keyed = _KEYED.match(sample) is not None
        assert client_keyed == server_keyed, (
            f"POST {path}: the server {'takes' if server_keyed else 'takes no'} "
            f"Idempotency-Key but the client {'sends' if client_keyed else 'sends none'}"
        )
        once = _SENT_ONCE.match(sample) is not None
        assert not (client_keyed and once), f"POST {path} is both keyed and sent once"
        if not client_keyed and not once:
            assert path in RETRIED_SAFELY, (
                f"POST {path} is neither keyed nor sent once: the client would send it again "
                "after a lost answer. Key it (api/deps.RequestKey and transport._KEYED), add "
                "it to transport._SENT_ONCE, or name here why a second copy is harmless"
            )
    stale = set(RETRIED_SAFELY) - set(routes)
    assert not stale, f"no such POST routes any more: {sorted(stale)}"
    keyed_here = {p for p in RETRIED_SAFELY if _KEYED.match(concrete(p))}
    assert not keyed_here, f"keyed now, take them out of RETRIED_SAFELY: {sorted(keyed_here)}"

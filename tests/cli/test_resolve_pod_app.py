"""`--app` takes what the bill and the statement print for a pod's charges: `pod:NAME`, and
the short id of the pod's app (neither worked: a pod's app is not among `crucible apps`)."""

from __future__ import annotations

from typing import Any

from crucible.cli.resources import resolve_app

POD_APP = "ap-01m98x0000000000004cgwmss3"


class _Client:
    """The two reads resolve_app makes, as a pod-only account's exchange answers them."""

    def list_apps(self) -> list[Any]:
        return []

    def get(self, path: str) -> Any:
        if path == "/v1/pods":
            return [{"id": "pd-1", "name": "p1", "app_id": POD_APP}]
        if path == "/v1/pods/p1":
            return {"id": "pd-1", "name": "p1", "app_id": POD_APP}
        raise AssertionError(path)


def test_a_pods_app_is_named_as_the_statement_prints_it() -> None:
    client: Any = _Client()
    assert resolve_app(client, "pod:p1") == POD_APP
    assert resolve_app(client, "ap-4cgwmss3") == POD_APP

"""Pods and clusters through the API, in-process on SQLite and PostgreSQL: bad input gets a
clear 4xx naming the problem (never a 500), another account's pod is not found, a deleted
pod cannot be started, pod apps stay out of app lists, and the store keeps one live pod per
name."""

from __future__ import annotations

import pytest

from crucible.protocol.accounts import Scope
from crucible.protocol.pods import PodInfo
from crucible.sdk._client import Client
from crucible.sdk._pods import Pod

from server_testlib import MakeServer, ServerUnderTest, error_code


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"name": "Bad_Name"}, "invalid_request", "pod name 'Bad_Name' is not valid"),
        ({"name": "-x"}, "invalid_request", "pod name"),
        # Commands take a name or an id: a pod named like another's short id was the other.
        ({"name": "pd-n1dsrye7"}, "invalid_request", "the shape of an id"),
        (
            {"name": "p", "market": {"tier": "interruptible"}},
            "invalid_request",
            "--tier interruptible is for GPU pods",
        ),
        ({"name": "a" * 64}, "invalid_request", "1-63"),
        ({"name": "p", "gpu": "H900"}, "invalid_gpu", "unknown GPU model 'H900'"),
        ({"name": "p", "gpu": "H100:0"}, "invalid_gpu", "positive integer"),
        ({"name": "p", "gpu": "H100:x"}, "invalid_gpu", "H100:2"),
        ({"name": "p", "disk": "lots"}, "invalid_resources", "disk 'lots' is not a size"),
        ({"name": "p", "disk": "1KiB"}, "invalid_resources", "64MiB to 64TiB"),
        ({"name": "p", "ports": ["99999/http"]}, "invalid_request", "port '99999/http'"),
        ({"name": "p", "ports": ["22/udp"]}, "invalid_request", "PORT/tcp"),
        ({"name": "p", "ports": ["80", "80/tcp"]}, "invalid_request", "given twice"),
        ({"name": "p", "env": {"1BAD": "x"}}, "invalid_request", "not a variable name"),
        ({"name": "p", "env": {"CRUCIBLE_TOKEN": "x"}}, "invalid_request", "reserved"),
        (
            {"name": "p", "ssh_keys": ["-----BEGIN OPENSSH PRIVATE KEY-----"]},
            "invalid_request",
            "public key",
        ),
        (
            {"name": "p", "ssh_keys": ['ssh-ed25519 AAAA a@b\ncommand="x" ssh-rsa AAAA']},
            "invalid_request",
            "one line",
        ),
        ({"name": "p", "image": "has space"}, "invalid_request", "not an image reference"),
        ({"name": "p", "volumes": {"/proc": "v"}}, "invalid_request", "system directory"),
        ({"name": "p", "memory": "lots"}, "invalid_resources", "not a size"),
        ({"name": "p", "market": {"tier": "on_demand", "bid_micros": 5}}, "invalid_request", "bid"),
        ({"name": "p", "surprise": 1}, "invalid_request", "surprise"),
    ],
)
def test_bad_pod_requests_are_refused_clearly(
    server: ServerUnderTest, body: dict[str, object], code: str, words: str
) -> None:
    alice = server.tenant("alice")
    r = server.request("POST", "/v1/pods", token=alice.token, json=body)
    assert r.status_code in (400, 422), r.text
    assert error_code(r) == code, r.text
    assert words in r.json()["error"]["message"], r.text
    assert server.ok("GET", "/v1/pods", token=alice.token) == []


def test_pods_belong_to_their_account(server: ServerUnderTest) -> None:
    alice, bob = server.tenant("alice"), server.tenant("bob")
    made = server.ok(
        "POST",
        "/v1/pods",
        token=alice.token,
        json={"name": "box", "gpu": "H100:2", "image": "python:3.12-slim", "disk": "20GiB"},
    )
    assert made["state"] == "pending" and made["gpu"] == "H100:2" and made["cpu"] == 2
    assert made["image"] == "python:3.12-slim" and made["disk_bytes"] == 20 * 2**30
    assert made["memory_mib"] == 8192 and made["tier"] == "on_demand"
    for path in ("/v1/pods/box", f"/v1/pods/{made['id']}", f"/v1/pods/{made['id']}/logs"):
        r = server.request("GET", path, token=bob.token)
        assert r.status_code == 404 and error_code(r) == "not_found"
        assert "no pod" in r.json()["error"]["message"]
    for action in ("stop", "start"):
        r = server.request("POST", f"/v1/pods/{made['id']}/{action}", token=bob.token)
        assert r.status_code == 404
    assert server.request("DELETE", f"/v1/pods/{made['id']}", token=bob.token).status_code == 404
    assert server.ok("GET", "/v1/pods", token=bob.token) == []
    # Bob may use the same name: names are per account.
    assert server.ok("POST", "/v1/pods", token=bob.token, json={"name": "box"})["name"] == "box"
    # A second live pod of the same name is a conflict naming what to do.
    r = server.request("POST", "/v1/pods", token=alice.token, json={"name": "box"})
    assert r.status_code == 409 and "crucible pod rm box" in r.json()["error"]["message"]
    # The pod's app is not among the account's apps.
    assert all(
        not a["name"].startswith("pod:") for a in server.ok("GET", "/v1/apps", token=alice.token)
    )
    # A host token cannot manage pods.
    host = server.tenant("alice", scope=Scope.HOST)
    assert server.request("GET", "/v1/pods", token=host.token).status_code == 403


def test_a_created_pod_is_shown_as_it_is_read_back(server: ServerUnderTest) -> None:
    """Creation answers from what it wrote (it no longer reads the pod back): the answer is
    the pod exactly as GET shows it, every field."""
    alice = server.tenant("alice")
    body = {
        "name": "box",
        "gpu": "H100:2",
        "cpu": 3,
        "memory": "2GiB",
        "command": "sleep infinity",
        "env": {"B": "1", "A": "2"},
        "ports": ["8080/http"],
        "market": {"tier": "interruptible", "bid_micros": 2_000_000},
    }
    created = server.ok("POST", "/v1/pods", token=alice.token, json=body)
    assert created == server.ok("GET", "/v1/pods/box", token=alice.token)
    assert (created["state"], created["cost_micros"], created["container_id"]) == (
        "pending",
        0,
        None,
    )
    assert created["env_keys"] == ["A", "B"] and created["tier"] == "interruptible"


def test_stop_start_and_delete_a_pending_pod(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    server.ok("POST", "/v1/pods", token=alice.token, json={"name": "box"})
    stopped = server.ok("POST", "/v1/pods/box/stop", token=alice.token)
    assert stopped["state"] == "stopped" and stopped["reason"] == "stopped by you"
    assert server.ok("POST", "/v1/pods/box/stop", token=alice.token)["state"] == "stopped"
    assert server.ok("POST", "/v1/pods/box/start", token=alice.token)["state"] == "pending"
    r = server.request("DELETE", "/v1/pods/box", token=alice.token)
    assert r.status_code == 204
    r = server.request("GET", "/v1/pods/box", token=alice.token)
    assert r.status_code == 404
    r = server.request("POST", "/v1/pods/box/start", token=alice.token)
    assert r.status_code == 409 and error_code(r) == "conflict"
    assert "was deleted" in r.json()["error"]["message"]
    assert "crucible pod create" in r.json()["error"]["message"]
    # The name is free again.
    assert (
        server.ok("POST", "/v1/pods", token=alice.token, json={"name": "box"})["state"] == "pending"
    )


def test_clusters_validate_and_belong_to_their_account(server: ServerUnderTest) -> None:
    alice, bob = server.tenant("alice"), server.tenant("bob")
    for body, words in [
        ({"name": "ring", "nodes": 2}, "give --gpu"),
        ({"name": "ring", "nodes": 1, "gpu": "H100"}, "nodes"),
        ({"name": "ring", "nodes": 65, "gpu": "H100"}, "nodes"),
        ({"name": "Ring", "nodes": 2, "gpu": "H100"}, "cluster name 'Ring'"),
        ({"name": "cl-n1dsrye7", "nodes": 2, "gpu": "H100"}, "the shape of an id"),
        ({"name": "r" * 61, "nodes": 2, "gpu": "H100"}, "at most 60"),
    ]:
        r = server.request("POST", "/v1/clusters", token=alice.token, json=body)
        assert r.status_code == 400, r.text
        assert words in r.json()["error"]["message"], r.text
    made = server.ok(
        "POST",
        "/v1/clusters",
        token=alice.token,
        json={"name": "ring", "nodes": 3, "gpu": "H100:8"},
    )
    assert [m["name"] for m in made["members"]] == ["ring-0", "ring-1", "ring-2"]
    assert [m["rank"] for m in made["members"]] == [0, 1, 2]
    assert made["state"] == "pending" and 29500 <= made["master_port"] < 31500
    r = server.request("GET", "/v1/clusters/ring", token=bob.token)
    assert r.status_code == 404 and "no cluster" in r.json()["error"]["message"]
    # Members are pods, stopped with their cluster only.
    r = server.request("POST", "/v1/pods/ring-1/stop", token=alice.token)
    assert r.status_code == 409 and "crucible cluster stop" in r.json()["error"]["message"]
    r = server.request("POST", "/v1/pods", token=alice.token, json={"name": "ring-0"})
    assert r.status_code == 409
    stopped = server.ok("POST", "/v1/clusters/ring/stop", token=alice.token)
    assert stopped["state"] == "stopped"
    assert server.request("DELETE", "/v1/clusters/ring", token=alice.token).status_code == 204
    assert server.ok("GET", "/v1/pods", token=alice.token) == []
    r = server.request("POST", "/v1/clusters/ring/start", token=alice.token)
    assert r.status_code == 409 and "was deleted" in r.json()["error"]["message"]


def test_with_a_ports_domain_a_pod_names_each_http_ports_own_url(make_server: MakeServer) -> None:
    """With CRUCIBLE_PORTS_DOMAIN, a published HTTP port lives on its own host, and the
    exchange's URL of it is a redirect there (which drops an Authorization header): the pod
    says where, the SDK and the CLI use it. Without a domain the field stays empty."""
    server = make_server(ports_domain="Ports.Example.Test")
    alice = server.tenant("alice")
    body = {"name": "nb", "ports": ["8888/http", "22/tcp", "6006/http"]}
    created = server.ok("POST", "/v1/pods", token=alice.token, json=body)
    pod_id = created["id"]
    expected = {
        str(p): f"http://{pod_id}-{p}.ports.example.test/pods/{pod_id}/ports/{p}/"
        for p in (8888, 6006)
    }
    assert created["port_urls"] == expected
    assert server.ok("GET", "/v1/pods/nb", token=alice.token)["port_urls"] == expected
    [listed] = server.ok("GET", "/v1/pods", token=alice.token)
    assert listed["port_urls"] == expected
    assert server.ok("POST", "/v1/pods/nb/stop", token=alice.token)["port_urls"] == expected
    # A cluster's members are pods: each names its own.
    ring = {"name": "ring", "nodes": 2, "gpu": "H100", "ports": ["8888/http"]}
    members = server.ok("POST", "/v1/clusters", token=alice.token, json=ring)["members"]
    shown = server.ok("GET", "/v1/clusters/ring", token=alice.token)["members"]
    [listed_ring] = server.ok("GET", "/v1/clusters", token=alice.token)
    for seen in (members, shown, listed_ring["members"]):
        assert [m["port_urls"] for m in seen] == [
            {"8888": f"http://{m['id']}-8888.ports.example.test/pods/{m['id']}/ports/8888/"}
            for m in members
        ]
    client = Client("http://exchange.example.test:8745", alice.token)
    try:
        pod = Pod(PodInfo.model_validate(created), client)
        assert pod.port_url(8888) == expected["8888"]
    finally:
        client.close()
    plain = make_server()
    bob = plain.tenant("bob")
    made = plain.ok("POST", "/v1/pods", token=bob.token, json=body)
    assert made["port_urls"] == {}
    client = Client("http://exchange.example.test:8745", bob.token)
    try:
        url = Pod(PodInfo.model_validate(made), client).port_url(8888)
    finally:
        client.close()
    assert url == f"http://exchange.example.test:8745/pods/{made['id']}/ports/8888/"


def test_a_pod_placed_over_a_preempted_lease_says_it_waits_out_the_grace(
    server: ServerUnderTest,
) -> None:
    """Placed, its container held back by the grace of the interruptible lease it
    preempted: the pod said only `pending`, without a reason."""
    from sqlalchemy import select, update

    from crucible.server.store.tables import containers, pods

    alice = server.tenant("alice")
    host_id = server.register_host(server.tenant("alice", Scope.HOST).token)
    server.ok("POST", "/v1/pods", token=alice.token, json={"name": "box"})
    with server.state.engine.connect() as conn:
        fid = conn.execute(select(pods.c.function_id).where(pods.c.name == "box")).scalar_one()
    cid, _ = server.place_container(fid, host_id)
    with server.state.engine.begin() as conn:
        created = conn.execute(
            select(containers.c.created_ms).where(containers.c.id == cid)
        ).scalar_one()
        conn.execute(
            update(containers).where(containers.c.id == cid).values(start_after_ms=created + 30_000)
        )
    shown = server.ok("GET", "/v1/pods/box", token=alice.token)
    assert shown["state"] == "pending"
    assert "placed; it starts at" in shown["reason"] and "grace" in shown["reason"]


def test_a_pod_whose_volume_was_deleted_is_not_started(server: ServerUnderTest) -> None:
    """As at create: the start was accepted, placed and billed, then failed on the host."""
    alice = server.tenant("alice").token
    server.ok("POST", "/v1/volumes", token=alice, json={"name": "data"})
    body = {"name": "box", "volumes": {"/data": "data"}}
    server.ok("POST", "/v1/pods", token=alice, json=body)
    server.ok("POST", "/v1/pods/box/stop", token=alice)
    assert server.request("DELETE", "/v1/volumes/data", token=alice).status_code == 204
    r = server.request("POST", "/v1/pods/box/start", token=alice)
    assert r.status_code == 404 and "volume 'data'" in r.text, r.text
    assert server.ok("GET", "/v1/pods/box", token=alice)["state"] == "stopped"

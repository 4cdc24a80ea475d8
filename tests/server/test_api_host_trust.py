"""Isolation and verification through the API on SQLite and PostgreSQL: hosts store their
agent's isolation report and self-test; the server verifies the figures against the
catalog (at registration and when a sync brings fresh ones), shows both in the host list
and the market, audits each verdict, refuses fake GPUs outside dev mode, and the scheduler
places a stranger's calls only on fully isolated hosts and verified=True calls only on
verified hosts, failing them otherwise with a reason that says so."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from crucible.protocol.accounts import Scope
from crucible.protocol.gpus import GPU_CATALOG
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import containers

from server_testlib import (
    FULL_ISOLATION,
    PROCESS_ISOLATION,
    MakeServer,
    ServerUnderTest,
    error_code,
)

H100_REAL = [{"index": 0, "model": "H100", "memory_mib": 81559, "uuid": "GPU-real-0"}]
H100_FAKE = [{**H100_REAL[0], "uuid": "GPU-fake-0", "fake": True}]


def self_test(share: float = 0.7, cores: float = 7.8) -> list[dict[str, Any]]:
    spec = GPU_CATALOG["H100"]
    return [
        {
            "kind": "gpu",
            "device_index": 0,
            "model": "H100",
            "figures": {
                "matmul_tflops": spec.matmul_tflops * share,
                "mem_bandwidth_gbs": spec.mem_bandwidth_gbs * share,
            },
            "measured_ms": 800,
        },
        {
            "kind": "cpu",
            "model": "cpu",
            "figures": {"cores": cores, "mem_bandwidth_gbs": 9.5},
            "measured_ms": 300,
        },
    ]


def register(server: ServerUnderTest, token: str, gpus: list[Any], **body: Any) -> Any:
    inv = {"cpu_cores": 8, "memory_mib": 16384, "disk_mib": 0, "gpus": gpus}
    return server.request(
        "POST",
        "/v1/hosts/register",
        token=token,
        json={"name": "gpu-1", "inventory": inv, **body},
    )


def test_fake_gpus_are_refused_outside_dev_mode(make_server: MakeServer) -> None:
    prod = make_server(dev_mode=False)
    r = register(prod, prod.tenant("hoster", Scope.HOST).token, H100_FAKE)
    assert r.status_code == 403 and error_code(r) == "forbidden"
    assert "CRUCIBLE_DEV_MODE" in r.json()["error"]["message"]
    dev = make_server()  # dev mode: registered, never verified
    info = register(dev, dev.tenant("hoster", Scope.HOST).token, H100_FAKE, self_test=[]).json()
    assert info["verified"] is False
    assert info["verification"]["reason"] == "declared fake GPUs are never verified"


def test_self_test_figures_are_verified_shown_updated_and_audited(server: ServerUnderTest) -> None:
    host_token = server.tenant("hoster", Scope.HOST).token
    info = register(server, host_token, H100_REAL, self_test=self_test()).json()
    assert info["verified"] is True and "692 TFLOPS" in info["verification"]["reason"]
    assert info["isolated"] is False and info["isolation"] is None
    renter = server.tenant("renter").token
    [listed] = server.ok("GET", "/v1/hosts", token=renter)
    assert listed["verified"] is True and listed["verification"]["results"][0]["model"] == "H100"
    [market] = server.ok("GET", "/v1/market/hosts", token=renter)
    assert market["verified"] is True and market["isolated"] is False
    assert market["isolation"].startswith("process: no isolation report")

    # A periodic self-test finds the card throttled: the host is no longer verified.
    sync = {"containers": [], "self_test": self_test(share=0.2)}
    server.ok("POST", f"/v1/hosts/{info['id']}/sync", token=host_token, json=sync)
    [listed] = server.ok("GET", "/v1/hosts", token=renter)
    assert listed["verified"] is False
    assert "GPU 0 (H100): 198 TFLOPS measured, 20%" in listed["verification"]["reason"]

    # The same verdict again (the next hourly rerun) is not audited again.
    server.ok("POST", f"/v1/hosts/{info['id']}/sync", token=host_token, json=sync)

    admin = server.tenant("operator", Scope.ADMIN).token
    audit = server.ok("GET", "/v1/audit?action=host.verification", token=admin)["entries"]
    assert [(e["target"], e["detail"]["verified"]) for e in audit] == [
        (info["id"], False),
        (info["id"], True),
    ]
    assert audit[0]["actor_account_id"] is None  # the server's own verdict


def _fails_with(server: ServerUnderTest, token: str, call_id: str, words: str) -> None:
    info = server.ok("GET", f"/v1/calls/{call_id}", token=token)
    assert info["state"] == "failed", info
    assert info["error"]["code"] == "resources_unsatisfiable"
    assert words in info["error"]["message"], info["error"]["message"]


def test_the_scheduler_keeps_strangers_off_process_hosts(make_server: MakeServer) -> None:
    server = make_server(unschedulable_grace_s=0)
    owner = server.tenant("alice").token
    server.register_host(
        server.tenant("alice", Scope.HOST).token, "alice-laptop", isolation=PROCESS_ISOLATION
    )
    stranger = server.tenant("bob").token
    bob_fn = server.new_function(stranger, server.new_app(stranger), server.put_blob(stranger))
    [bob_call] = server.new_calls(stranger, bob_fn)
    alice_fn = server.new_function(owner, server.new_app(owner), server.put_blob(owner))
    server.new_calls(owner, alice_fn)
    SchedulerLoop(server.state).tick()
    _fails_with(server, stranger, bob_call, "no fully isolated host can run this function")
    [host] = server.ok("GET", "/v1/hosts", token=owner)
    assert host["containers"] == 1  # alice's, and only alice's
    # A fully isolated host of a third account takes bob's next call.
    server.register_host(server.tenant("carol", Scope.HOST).token, "carol-box")
    server.new_calls(stranger, bob_fn)
    SchedulerLoop(server.state).tick()
    by_name = {h["name"]: h for h in server.ok("GET", "/v1/hosts", token=owner)}
    assert by_name["carol-box"]["containers"] == 1 and by_name["carol-box"]["isolated"] is True


def test_verified_functions_run_only_on_verified_hosts(make_server: MakeServer) -> None:
    server = make_server(unschedulable_grace_s=0)
    builder = server.tenant("dana").token
    server.register_host(server.tenant("erin", Scope.HOST).token, "unverified-box")
    fn = server.new_function(
        builder,
        server.new_app(builder),
        server.put_blob(builder),
        market={"verified": True},
    )
    [call] = server.new_calls(builder, fn)
    SchedulerLoop(server.state).tick()
    _fails_with(server, builder, call, "no verified host can run this function")
    quote = server.ok(
        "POST", "/v1/market/quote", token=builder, json={"gpu": "H100", "verified": True}
    )
    assert quote["available"] is False and quote["refusal"] in ("unverified", "no_offer")
    # A verified, fully isolated host comes: the next call runs there.
    made = register(
        server,
        server.tenant("frank", Scope.HOST).token,
        H100_REAL,
        self_test=self_test(),
        isolation=FULL_ISOLATION.model_dump(mode="json"),
    ).json()
    assert made["verified"] is True and made["isolated"] is True
    server.new_calls(builder, fn)
    SchedulerLoop(server.state).tick()
    by_name = {h["name"]: h for h in server.ok("GET", "/v1/hosts", token=builder)}
    assert by_name["gpu-1"]["containers"] == 1 and by_name["unverified-box"]["containers"] == 0


def test_the_market_follows_a_host_that_stops_isolating(server: ServerUnderTest) -> None:
    hoster = server.tenant("gina", Scope.HOST).token
    renter = server.tenant("hank").token
    server.register_host(hoster, "gpu-box", gpus=H100_FAKE)  # fully isolated
    quote = server.ok("POST", "/v1/market/quote", token=renter, json={"gpu": "H100"})
    assert quote["available"] is True
    # The agent restarts on the process runtime (an older agent: no report at all).
    server.register_host(hoster, "gpu-box", isolation=None, gpus=H100_FAKE)
    quote = server.ok("POST", "/v1/market/quote", token=renter, json={"gpu": "H100"})
    assert quote["available"] is False and quote["refusal"] == "not_isolated"
    owner = server.tenant("gina").token
    assert server.ok("POST", "/v1/market/quote", token=owner, json={"gpu": "H100"})["available"]


def test_a_tenants_own_host_runs_strangers_work_only_once_approved(make_server: MakeServer) -> None:
    """Any builder may make a host token and register a host; its owner sees what runs there
    (code, inputs, secrets). Such a host ran every account's work as soon as its agent
    reported full isolation (a probe read another tenant's secret, code and inputs through the
    container it was handed). Now it runs its owner's work until an admin approves the
    account as a provider, and again only its owner's once the approval is taken back."""
    server = make_server(unschedulable_grace_s=0)
    admin = server.tenant("operator", Scope.ADMIN).token
    mallory = server.tenant("mallory").token
    host_token = server.ok("POST", "/v1/tokens", token=mallory, json={"scope": "host"})["token"]
    host_id = server.register_host(host_token, "mallory-box")  # reports full isolation
    [host] = server.ok("GET", "/v1/hosts", token=mallory)
    assert host["isolated"] is False and host["isolation"]["runtime"] == "bwrap"
    assert server.ok("GET", "/v1/accounts/me", token=mallory)["provider"] is False

    alice = server.tenant("alice").token
    alice_fn = server.new_function(alice, server.new_app(alice), server.put_blob(alice))
    [alice_call] = server.new_calls(alice, alice_fn)
    mallory_fn = server.new_function(mallory, server.new_app(mallory), server.put_blob(mallory))
    server.new_calls(mallory, mallory_fn)
    SchedulerLoop(server.state).tick()
    _fails_with(server, alice, alice_call, "not a provider the operator approved")
    [host] = server.ok("GET", "/v1/hosts", token=mallory)
    assert host["containers"] == 1  # mallory's own
    sync = server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json={})
    assert {a["account_id"] for a in sync["start"]} == {_account(server, mallory)}

    # Only an admin approves a provider.
    r = server.request("PATCH", "/v1/accounts/mallory", token=mallory, json={"provider": True})
    assert r.status_code == 403 and error_code(r) == "forbidden"
    r = server.request("PATCH", "/v1/accounts/nobody", token=admin, json={"provider": True})
    assert r.status_code == 404
    approved = server.ok("PATCH", "/v1/accounts/mallory", token=admin, json={"provider": True})
    assert approved["provider"] is True
    [host] = server.ok("GET", "/v1/hosts", token=mallory)
    assert host["isolated"] is True
    [alice_call] = server.new_calls(alice, alice_fn)
    SchedulerLoop(server.state).tick()
    [host] = server.ok("GET", "/v1/hosts", token=mallory)
    assert host["containers"] == 2  # alice's call runs there now

    # Taken back: nothing new of another account is placed there, and alice's container
    # there is asked to stop (a warm one took new calls for as long as it lived).
    server.ok("PATCH", "/v1/accounts/mallory", token=admin, json={"provider": False})
    [host] = server.ok("GET", "/v1/hosts", token=mallory)
    assert host["isolated"] is False
    with server.state.engine.connect() as conn:
        states = {
            r.account_id: r.state
            for r in conn.execute(
                select(containers.c.account_id, containers.c.state).where(
                    containers.c.host_id == host_id
                )
            )
        }
    assert states == {_account(server, mallory): "pending", _account(server, alice): "stopping"}
    bob = server.tenant("bob").token
    bob_fn = server.new_function(bob, server.new_app(bob), server.put_blob(bob))
    [bob_call] = server.new_calls(bob, bob_fn)
    SchedulerLoop(server.state).tick()
    _fails_with(server, bob, bob_call, "no fully isolated host can run this function")
    # A registration again (an agent restart) keeps the host closed.
    server.register_host(host_token, "mallory-box")
    [host] = server.ok("GET", "/v1/hosts", token=mallory)
    assert host["isolated"] is False
    audit = server.ok("GET", "/v1/audit?action=account.provider", token=admin)["entries"]
    assert [e["detail"]["provider"] for e in audit] == [False, True]


def _account(server: ServerUnderTest, token: str) -> str:
    return str(server.ok("GET", "/v1/accounts/me", token=token)["id"])


def test_the_book_lists_only_what_its_reader_may_buy(make_server: MakeServer) -> None:
    """A host that runs only its owner's work (not an approved provider) priced its GPUs far
    below everyone's, and every account's book showed that ask as the market's best, though
    none but the owner could buy it (hostile2 probe)."""
    server = make_server()
    mal = server.tenant("mal").token
    host_token = server.ok("POST", "/v1/tokens", token=mal, json={"scope": "host"})["token"]
    host_id = server.register_host(host_token, "cheap", gpus=H100_FAKE)  # fully isolated
    offer = {
        "device_type": "H100",
        "on_demand_micros": 1_000_000,
        "interruptible_min_micros": 500_000,
        "reserved_micros": 800_000,
    }
    server.ok("PUT", f"/v1/hosts/{host_id}/offers", token=mal, json=offer)
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json={})
    renter = server.tenant("renter").token
    [theirs] = server.ok("GET", "/v1/market/book?gpu=H100", token=renter)
    assert (theirs["asks"], theirs["listed_devices"]) == ([], 0), theirs
    [mine] = server.ok("GET", "/v1/market/book?gpu=H100", token=mal)
    assert mine["asks"] == [{"price_micros": 1_000_000, "devices": 1}], mine
    admin = server.tenant("ops", Scope.ADMIN).token
    server.ok("PATCH", "/v1/accounts/mal", token=admin, json={"provider": True})
    SchedulerLoop(server.state).tick()  # the market learns of the host's new standing
    [theirs] = server.ok("GET", "/v1/market/book?gpu=H100", token=renter)
    assert theirs["asks"] == [{"price_micros": 1_000_000, "devices": 1}], theirs

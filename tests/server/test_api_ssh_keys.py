"""SSH keys over the API (in-process app, SQLite and PostgreSQL): validated on the way in,
listed per account, removed by id, fingerprint or name; another account's key is a 404."""

from __future__ import annotations

from server_testlib import ServerUnderTest, error_code

# A real ed25519 public key (ssh-keygen -t ed25519 -C alice@laptop).
ALICE_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKJ15m8NMQVQa5vY/mf9urniuOUaMvYkgRr4tIAgR+Sx alice@laptop"
)


def test_keys_are_per_account(server: ServerUnderTest) -> None:
    alice, bob = server.tenant("alice"), server.tenant("bob")
    key = server.ok("POST", "/v1/ssh-keys", token=alice.token, json={"public_key": ALICE_KEY})
    assert key["name"] == "alice@laptop" and key["type"] == "ssh-ed25519"
    assert (
        key["fingerprint"].startswith("SHA256:")
        and key["public_key"] == ALICE_KEY.rsplit(" ", 1)[0]
    )
    assert [k["id"] for k in server.ok("GET", "/v1/ssh-keys", token=alice.token)] == [key["id"]]
    assert server.ok("GET", "/v1/ssh-keys", token=bob.token) == []
    r = server.request("DELETE", f"/v1/ssh-keys/{key['id']}", token=bob.token)
    assert r.status_code == 404 and error_code(r) == "not_found"
    # Bob may register the same key for his own account.
    server.ok("POST", "/v1/ssh-keys", token=bob.token, json={"public_key": ALICE_KEY})
    r = server.request("POST", "/v1/ssh-keys", token=alice.token, json={"public_key": ALICE_KEY})
    assert r.status_code == 409 and error_code(r) == "conflict"
    r = server.request("DELETE", f"/v1/ssh-keys/{key['fingerprint']}", token=alice.token)
    assert r.status_code == 204
    assert server.ok("GET", "/v1/ssh-keys", token=alice.token) == []


def test_a_bad_key_is_a_400_naming_the_problem(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    r = server.request(
        "POST", "/v1/ssh-keys", token=alice.token, json={"public_key": "ssh-ed25519 AAAA"}
    )
    assert r.status_code == 400 and error_code(r) == "invalid_request"
    assert "bad SSH public key" in r.json()["error"]["message"]

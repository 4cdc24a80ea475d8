"""OCI image references, Image.from_registry's spec, and the registry settings' grammar."""

from __future__ import annotations

import pytest

import crucible
from crucible.agent.oci import RegistryConfig
from crucible.protocol.image_refs import parse_image_ref
from crucible.protocol.images import ImageSpec

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("python", "docker.io/library/python:latest"),
        ("python:3.12-slim", "docker.io/library/python:3.12-slim"),
        ("org/app:1", "docker.io/org/app:1"),
        ("docker.io/python", "docker.io/library/python:latest"),
        ("ghcr.io/org/app", "ghcr.io/org/app:latest"),
        ("localhost/app:v", "localhost/app:v"),
        ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t"),
        (f"python@{D}", f"docker.io/library/python@{D}"),
        (f"python:3.12@{D}", f"docker.io/library/python:3.12@{D}"),
    ],
)
def test_references_normalise(text: str, expected: str) -> None:
    assert str(parse_image_ref(text)) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "non-empty"),
        ("Python", "lowercase"),
        ("python:bad tag", "spaces|tag"),
        ("python@sha256:1234", "64 lowercase hex"),
        ("python:" + "t" * 200, "tag"),
        ("a/../b", "lowercase"),
        (" python", "spaces"),
        # It failed later, in the agent, with "ValueError: Port out of range 0-65535".
        ("localhost:99999/x", "the registry's port '99999' is not a port"),
        ("127.0.0.1:0/x", "is not a port"),
        # Credentials are not part of a reference (it was "the digest must be ...").
        ("user:pass@evil.example/x:1", "holds no credentials"),
    ],
)
def test_bad_references_say_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as err:
        parse_image_ref(text)
    assert "pass@" not in str(err.value)  # a password given is never repeated


def test_from_registry_spec_and_identity() -> None:
    a = crucible.Image.from_registry("python:3.12-slim")
    b = crucible.Image.from_registry("python:3.13-slim")
    s = crucible.Image.from_registry("python:3.12-slim", secret=crucible.Secret.from_name("reg"))
    assert a.spec().registry == "python:3.12-slim"
    assert len({a.id, b.id, s.id, crucible.Image().id}) == 4  # the id follows the reference
    assert s.spec().registry_secret == "reg"
    # images without a registry keep their ids (the fields enter the hash only when set)
    assert ImageSpec(env={"A": "b"}).id == ImageSpec.model_validate({"env": {"A": "b"}}).id
    with pytest.raises(crucible.InvalidRequestError, match="takes no build steps"):
        a.pip_install("six")
    with pytest.raises(crucible.InvalidRequestError, match=r"Secret\.from_name"):
        crucible.Image.from_registry("python", secret="hunter2")
    with pytest.raises(crucible.InvalidRequestError, match="must be lowercase"):
        crucible.Image.from_registry("Python")
    with pytest.raises(ValueError, match="image id does not match"):
        ImageSpec(registry="python:3.13", id=a.id)


def test_registry_settings_grammar() -> None:
    cfg = RegistryConfig.parse("docker.io=http://127.0.0.1:5000", "127.0.0.1:6000, r.local:1")
    assert cfg.base_url("docker.io") == "http://127.0.0.1:5000"
    assert cfg.base_url("127.0.0.1:6000") == "http://127.0.0.1:6000"
    assert cfg.base_url("ghcr.io") == "https://ghcr.io"
    assert RegistryConfig().base_url("docker.io") == "https://registry-1.docker.io"
    with pytest.raises(ValueError, match="REGISTRY=URL"):
        RegistryConfig.parse("docker.io")

"""Every example in examples/ runs, as its docstring says (`crucible run examples/X.py`),
against a real exchange: a `crucible server` and an agent whose host has two fake H100s."""

from __future__ import annotations

import ast
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Exchange

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    root = tmp_path_factory.mktemp("examples")
    ex = Exchange(root, f"sqlite:///{root / 'store.db'}")
    ex.start_server()
    try:
        ex.start_agent("gpu-host", fake_gpus="2xH100")
        yield ex
    finally:
        ex.close()


def _run(exchange: Exchange, tmp_path: Path, name: str) -> str:
    """`crucible run examples/NAME` as a new account; its output (it must succeed)."""
    token = exchange.tenant_token(f"ex-{uuid.uuid4().hex[:8]}")
    env = {
        **exchange.process_env(tmp_path / "home"),
        "CRUCIBLE_SERVER_URL": exchange.url,
        "CRUCIBLE_TOKEN": token,
    }
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "run", str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # examples must not depend on the working directory
    )
    assert out.returncode == 0, f"{name} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_every_example_says_how_to_run_it() -> None:
    apps = [p for p in EXAMPLES.glob("*.py") if "crucible.App(" in p.read_text()]
    assert {p.name for p in apps} >= {
        "hello.py",
        "classes.py",
        "web_endpoints.py",
        "batching.py",
        "generators.py",
        "market_tiers.py",
        "job_api.py",
    }
    for path in apps:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert f"crucible run examples/{path.name}" in doc, f"{path.name}: say how to run it"


def test_hello(exchange: Exchange, tmp_path: Path) -> None:
    out = _run(exchange, tmp_path, "hello.py").split()
    assert out[:3] == ["49", str(sum(x * x for x in range(10_000))), "144"]


def test_classes(exchange: Exchange, tmp_path: Path) -> None:
    lines = _run(exchange, tmp_path, "classes.py").splitlines()
    assert lines[0] == "[1, 2, 3]"  # state kept by the container's one instance
    assert lines[1] == "13"
    assert lines[2] == "[101, 103, 106]"
    assert lines[3].startswith("default pool runs in ct-")
    assert lines[4] == "5"


def test_generators(exchange: Exchange, tmp_path: Path) -> None:
    lines = _run(exchange, tmp_path, "generators.py").splitlines()
    assert lines[:6] == ["5", "4", "3", "2", "1", "liftoff"]
    assert lines[6] == "['STREAMS', 'STOP', 'CLEANLY'] then: no more words"


def test_batching(exchange: Exchange, tmp_path: Path) -> None:
    lines = _run(exchange, tmp_path, "batching.py").splitlines()
    assert "'batch': 1" in lines[0]
    assert lines[1].startswith("40 results; batch sizes seen: ")
    sizes = ast.literal_eval(lines[1].split(": ", 1)[1])
    assert max(sizes) > 1 and max(sizes) <= 8  # gathered into batches of at most 8


def test_job_api(exchange: Exchange, tmp_path: Path) -> None:
    out = _run(exchange, tmp_path, "job_api.py")
    assert "result: succeeded {'greeting': 'Hello, Ada!', 'length': 3}" in out
    assert "runsync: succeeded {'greeting': 'Hello, Grace?', 'length': 5}" in out
    assert "bad request: 400 invalid_request" in out
    assert "$ curl -s -X POST" in out  # each request shown as the curl that does it


def test_web_endpoints(exchange: Exchange, tmp_path: Path) -> None:
    out = _run(exchange, tmp_path, "web_endpoints.py")
    assert f"api is served at {exchange.url}/web/" in out and "/web-demo/api/" in out
    assert "{'hello': 'Ada'}" in out
    assert "{'x': 12, 'square': 144}" in out
    assert "{'you sent': {'x': 1}}" in out
    assert "hello without a token: 401" in out


def test_market_tiers(exchange: Exchange, tmp_path: Path) -> None:
    out = _run(exchange, tmp_path, "market_tiers.py")
    assert "quote     on_demand: $1.89/GPU-hour" in out
    assert "quote interruptible: $1.20/GPU-hour" in out
    for tier in ("on-demand", "interruptible", "reserved"):
        assert f"'tier': '{tier}'" in out
    assert "reserved 1xH100 for $" in out

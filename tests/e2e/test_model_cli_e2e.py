"""`crucible model deploy|list|show|adapter add|usage|stop` against a live exchange: the deploy
uploads the weights into the model's volume, deploys the engine app as a deployment like any
other and registers the model with its prices; an adapter directory lands beside them.

The engines themselves (crucible.inference) are not what this tests: where the host cannot
serve the model (here a process host, which cannot mount the model's volume), a request gets
a 502 that names the call its owner can look up, never a hang or a 500."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai

from harness import Exchange


def _cli(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout) if "--json" in args else done.stdout


def test_model_commands(exchange: Exchange, tmp_path: Path) -> None:
    token = exchange.owner_token("modeler")
    env = {
        **exchange.process_env(tmp_path / "cli-home"),
        "CRUCIBLE_SERVER_URL": exchange.url,
        "CRUCIBLE_TOKEN": token,
        "COLUMNS": "200",
    }
    weights = tmp_path / "tiny"
    weights.mkdir()
    (weights / "config.json").write_text('{"model_type": "llama"}')
    (weights / "model.safetensors").write_bytes(b"\0" * 1000)
    adapter = tmp_path / "sql-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 100)

    info = _cli(
        env,
        "model",
        "deploy",
        "tiny",
        "--weights",
        str(weights),
        "--engine",
        "transformers",
        "--max-containers",
        "1",
        "--price-input",
        "0.10",
        "--price-output",
        "0.20",
        "--json",
    )
    assert info["name"] == "tiny" and info["state"] == "running"
    assert (info["price_input_micros"], info["price_output_micros"]) == (100_000, 200_000)
    assert info["engine"] == "transformers" and info["weights"] == str(weights)
    client = exchange.client(token)
    try:
        paths = set(client.get("/v1/volumes/model-tiny/manifest")["files"])
        assert {"weights/config.json", "weights/model.safetensors"} <= paths, paths
        dep = client.get("/v1/deployments/tiny")
        assert dep["state"] == "running" and dep["versions"][0]["functions"] == ["serve"]
        spec = client.get("/v1/deployments/tiny/functions/serve")
        assert spec["web"]["kind"] == "asgi_app" and spec["max_containers"] == 1
    finally:
        client.close()

    _cli(env, "model", "adapter", "add", "tiny", "sql", "--path", str(adapter))
    shown = _cli(env, "model", "show", "tiny", "--json")
    assert [(a["name"], a["path"]) for a in shown["adapters"]] == [("sql", "/model/adapters/sql")]
    client = exchange.client(token)
    try:
        assert (
            "adapters/sql/adapter_config.json"
            in client.get("/v1/volumes/model-tiny/manifest")["files"]
        )
    finally:
        client.close()
    assert [m["name"] for m in _cli(env, "model", "list", "--json")] == ["tiny"]
    listing = _cli(env, "model", "list")
    assert "tiny" in listing and "$0.100000" in listing

    ai = openai.OpenAI(
        base_url=f"{exchange.url}/openai/v1", api_key=token, max_retries=0, timeout=120
    )
    assert [m.id for m in ai.models.list()] == ["tiny", "tiny:sql"]
    try:
        ai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("a process host cannot serve this model")
    except openai.APIStatusError as exc:
        assert exc.status_code == 502, exc
        assert "crucible call" in exc.message

    usage = _cli(env, "model", "usage", "tiny", "--json")
    assert usage["requests"] == 0  # a failed request uses no tokens
    assert "0 requests" in _cli(env, "model", "usage", "tiny")
    text = _cli(env, "model", "show", "tiny")
    assert "$0.1 in / $0.2 out per million tokens" in text and "/model/adapters/sql" in text
    stopped = _cli(env, "model", "stop", "tiny", "--json")
    assert stopped["state"] == "stopped"
    try:
        ai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("a stopped model serves nothing")
    except openai.NotFoundError as exc:
        assert "not being served" in exc.message

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible.cli.main",
            "model",
            "deploy",
            "x",
            "--weights",
            str(tmp_path / "missing"),
            "--engine",
            "transformers",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "no such file or directory" in done.stderr
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible.cli.main",
            "model",
            "deploy",
            "x",
            "--weights",
            str(weights),
            "--engine",
            "tensorflow",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "--engine must be one of" in done.stderr
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible.cli.main",
            "model",
            "adapter",
            "add",
            "tiny",
            "../up",
            "--path",
            str(adapter),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "the adapter's name must be" in done.stderr

    # Weights the engine could not load are refused before anything is uploaded: a file (or
    # a folder without config.json) for transformers, a file that is not GGUF for llama-cpp;
    # and containers' bounds that cannot hold.
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip")
    for args, needle in (
        ([str(weights / "config.json"), "--engine", "transformers"], "with a config.json"),
        ([str(adapter), "--engine", "vllm"], "a folder without one"),
        ([str(not_gguf), "--engine", "llama-cpp"], "not a .gguf file"),
        ([str(weights), "--engine", "llama-cpp"], "a folder; llama-cpp serves one .gguf file"),
        (
            [str(weights), "--engine", "transformers", "--min-containers", "3",
             "--max-containers", "2"],
            "--min-containers=3 is above --max-containers=2",
        ),
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "crucible.cli.main", "model", "deploy", "y", "--weights", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1 and needle in " ".join(done.stderr.split()), done.stderr
    assert "y" not in [m["name"] for m in _cli(env, "model", "list", "--json")]


def _fails(env: dict[str, str], *args: str) -> str:
    """The CLI's error (stderr, one line) for a command that must fail."""
    done = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, (args, done.stdout, done.stderr)
    return " ".join(done.stderr.split())


def test_model_rules_checked_before_upload_or_training(exchange: Exchange, tmp_path: Path) -> None:
    """Adapter names and ranks the engine would refuse, and container options that cannot
    hold, are refused by the CLI before anything is uploaded, trained or charged; a redeploy
    keeps the prices and visibility it does not set, and says so."""
    token = exchange.owner_token("ranker")
    env = {
        **exchange.process_env(tmp_path / "cli-home"),
        "CRUCIBLE_SERVER_URL": exchange.url,
        "CRUCIBLE_TOKEN": token,
        "COLUMNS": "200",
    }
    weights = tmp_path / "tiny"
    weights.mkdir()
    (weights / "config.json").write_text('{"model_type": "llama"}')
    (weights / "model.safetensors").write_bytes(b"\0" * 1000)
    big = tmp_path / "big-adapter"
    big.mkdir()
    (big / "adapter_config.json").write_text('{"r": 128}')
    (big / "adapter_model.safetensors").write_bytes(b"\0" * 100)
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    deploy = ["model", "deploy", "tiny", "--weights", str(weights), "--engine", "transformers"]
    _cli(env, *deploy, "--price-input", "0.10", "--price-output", "0.20", "--public", "--json")
    client = exchange.client(token)
    try:
        # Bad container options: refused before the weights are uploaded (no volume).
        for option, value, needle in (
            ("--memory", "lots", "memory"),
            ("--gpu", "Z9000", "Z9000"),
            ("--concurrency", "0", "max_inputs"),
        ):
            err = _fails(
                env, "model", "deploy", "bad", "--weights", str(weights), "--engine",
                "transformers", option, value,
            )  # fmt: skip
            assert needle in err, err
        volumes = [v["name"] for v in client.get("/v1/volumes")]
        assert "model-bad" not in volumes, volumes

        # Names the engine refuses are refused here, with the rule.
        for name in (".dot", "a" * 65):
            err = _fails(env, "model", "adapter", "add", "tiny", name, "--path", str(big))
            assert "starting with a letter or digit" in err, err
        err = _fails(
            env, "fine-tune", "create", "--base", "tiny", "--data", str(data), "--adapter", ".x"
        )
        assert "--adapter must be" in err and "starting with a letter or digit" in err, err

        # Another account's model is not one a `crucible model` command acts on (it went to
        # "no route GET /v1/models/local/tiny").
        for args in (("show",), ("usage",), ("adapter", "add")):
            extra = ("x", "--path", str(big)) if args[0] == "adapter" else ()
            err = _fails(env, "model", *args, "someone/tiny", *extra)
            assert "another account's model" in err and "no route" not in err, err

        # A rank over what the engine serves (64 by default): refused before upload/training.
        err = _fails(env, "model", "adapter", "add", "tiny", "big", "--path", str(big))
        assert "rank 128" in err and "--max-lora-rank 128" in err, err
        err = _fails(
            env, "fine-tune", "create", "--base", "tiny", "--data", str(data), "--rank", "128"
        )
        assert "rank 128" in err and "--max-lora-rank 128" in err, err
        files = client.get("/v1/volumes/model-tiny/manifest")["files"]
        assert not any(p.startswith(("adapters/", "fine-tunes/")) for p in files), files
        assert client.get("/v1/fine-tunes") == []

        # A redeploy without prices or --public keeps them, and says so; --max-lora-rank
        # raises what its engine serves.
        text = _cli(env, *deploy, "--max-lora-rank", "128")
        assert "prices and visibility unchanged" in text, text
        info = _cli(env, "model", "show", "tiny", "--json")
        assert (info["price_input_micros"], info["price_output_micros"], info["public"]) == (
            100_000,
            200_000,
            True,
        )
        _cli(env, "model", "adapter", "add", "tiny", "big", "--path", str(big))
        text = _cli(env, *deploy, "--price-output", "0.30", "--private")
        assert "0.2 out" in text and "0.3 out" in text and "now private" in text, text
    finally:
        client.close()

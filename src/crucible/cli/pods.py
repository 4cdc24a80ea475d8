"""`crucible pod create|list|show|logs|stop|start|rm`: machines rented until stopped
(docs/pods.md). Names, commands and log lines are chosen by others (or printed by their
programs): every one is made inert for the terminal before it is shown."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import typer

from crucible.cli._ids import resolve_id
from crucible.cli._output import clean, console, fmt_time, fmt_usd, print_json, shown, table
from crucible.cli.containers import PASSTHROUGH, exec_in, port_forward_to, proxy_to, ssh_to
from crucible.cli.resources import (
    JSON,
    MAX_CARBON,
    MIN_RELIABILITY,
    PREFER,
    REGION,
    VERIFIED,
    _client,
    check_market_options,
)
from crucible.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ResourcesUnsatisfiableError,
)
from crucible.protocol.logs import LogPage
from crucible.protocol.pods import (
    DEFAULT_DISK,
    NOT_PLACED_YET,
    PodInfo,
    check_ssh_key,
    parse_env,
    port_path,
)
from crucible.sdk._client import Client
from crucible.sdk._local_files import read_text_file
from crucible.sdk._pods import Pod, cannot_place

__all__ = ["register", "ssh_keys_of", "volumes_of"]

_FINAL = ("stopped", "preempted", "failed", "deleted")
_RUNS = ("pulling", "starting", "running")  # `pod rm` asks for --force
# How long `pod create` and `pod start` wait for the scheduler's first word on a new pending
# pod (it looks at once when a pod arrives; this bounds a busy exchange's delay).
_VERDICT_S = 5.0

WAIT = typer.Option(
    False, "--wait", help="Wait until it runs; exit 1 if it fails, cannot be placed or times out."
)
TIMEOUT = typer.Option(
    None,
    "--timeout",
    min=1,
    help="With --wait: give up after SECONDS (default 600).",
    metavar="SECONDS",
)


POD = typer.Argument(..., help="The pod's name, id or short id.")


def _path(client: Client, pod: str) -> str:
    """The route of a pod given by name, full id or short id."""
    try:
        ref = resolve_id(client, pod, "pd")
    except NotFoundError:
        ref = pod  # a name that happens to look like a short id
    return f"/v1/pods/{quote(ref, safe='')}"


def volumes_of(specs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition(":")
        if not sep or not name or not path:
            raise InvalidRequestError(f"--volume {spec[:80]!r}: write NAME:/path, e.g. data:/data")
        out[path] = name
    return out


def ssh_keys_of(files: list[Path]) -> list[str]:
    keys = []
    for f in files:
        text = read_text_file(f, "--ssh-key", 1 << 20)
        if "PRIVATE KEY" in text:
            raise InvalidRequestError(
                f"--ssh-key {f} is a private key; give the public one ({f}.pub)"
            )
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                keys.append(check_ssh_key(line))
            except InvalidRequestError as exc:
                raise InvalidRequestError(f"--ssh-key {f}: line {n}: {exc.message}") from None
    return keys


def _gib(n: int) -> str:
    return f"{n / 2**30:g} GiB"


def _port_urls(server_url: str, info: PodInfo) -> list[tuple[str, str]]:
    """The URL of each published HTTP port (the token opens it; `crucible pod link` prints
    a link that opens it without one)."""
    base = server_url.split(",")[0].rstrip("/")
    return [
        # On its own host when the exchange has a ports domain, else under the exchange's URL.
        (str(port), info.port_urls.get(str(port)) or base + port_path(info.id, port))
        for port in info.http_ports()
    ]


def _state(info: PodInfo) -> str:
    """The state and why (a failure's reason may end with its log's last lines: one line)."""
    return info.state + (f": {' | '.join(info.reason.splitlines())}" if info.reason else "")


def _check_wait(wait: bool, timeout_s: float | None) -> None:
    """Before anything is created or started: --timeout means nothing without --wait."""
    if timeout_s is not None and not wait:
        raise typer.BadParameter("--timeout goes with --wait", param_hint="--timeout")


def _settled(pod: Pod, wait: bool, timeout_s: float | None) -> PodInfo:
    """The pod just created or started, once the scheduler has said where it goes or why it
    waits; with ``wait``, once it runs. Raises when it cannot run: no host the exchange
    knows could ever run it, it failed, or ``timeout_s`` passed."""
    if wait:
        return pod.wait("running", timeout_s=600.0 if timeout_s is None else timeout_s)
    deadline = time.monotonic() + _VERDICT_S
    info = pod.info()
    while info.state == "pending" and info.reason == NOT_PLACED_YET:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
        info = pod.info()
    if info.unplaceable:
        raise cannot_place(info)
    return info


def _print_settled(info: PodInfo, as_json: bool) -> None:
    if as_json:
        print_json(info.model_dump())
    else:
        console.print(
            f"pod {shown(info.name)} ({info.id}): {info.state}; "
            f"`crucible pod show {shown(info.name)}` follows it"
        )
        if info.reason:  # why it waits (a host busy, the market's words)
            console.print(f"  {shown(' | '.join(info.reason.splitlines()))}")


def _show(info: PodInfo, server_url: str) -> None:
    rows = [
        ("id", info.id),
        ("name", info.name),
        ("state", _state(info)),
        ("gpu", info.gpu or "none (CPU pod)"),
        ("cpu / memory", _cores(info.cpu) + f" / {info.memory_mib} MiB"),
        ("image", info.image or "the exchange's default image"),
        ("disk", _gib(info.disk_bytes)),
        ("command", info.command or "-"),
        ("env", ", ".join(info.env_keys) or "-"),
        ("ports", ", ".join(info.ports) or "-"),
        ("volumes", ", ".join(f"{n}:{p}" for p, n in info.volumes.items()) or "-"),
        ("tier", info.tier),
        ("host", info.host_id or "-"),
        ("container", info.container_id or "-"),
        ("rate", f"{fmt_usd(info.rate_micros_per_hour)}/h" if info.rate_micros_per_hour else "-"),
        ("cost so far", fmt_usd(info.cost_micros)),
        ("created", fmt_time(info.created_ms)),
        ("started", fmt_time(info.started_ms)),
        ("stopped", fmt_time(info.stopped_ms)),
    ]
    table(f"Pod {info.name}", ["", ""], rows, ids=())
    urls = _port_urls(server_url, info)
    if urls:  # whole, after the table (which shows ids short)
        console.print(
            f"\nHTTP ports (your token opens them; `crucible pod link {clean(info.name)}` "
            "prints links that need none):",
            soft_wrap=True,
        )
        for port, url in urls:
            console.print(f"  {port}  {clean(url)}", soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    pod_app = typer.Typer(help="Pods: GPU or CPU machines rented until you stop them.")
    app.add_typer(pod_app, name="pod")

    @pod_app.command("create")
    def create(
        name_arg: str = typer.Argument(None, metavar="NAME", help="Same as --name."),
        name: str = typer.Option(None, "--name", help="1-63 of a-z, 0-9 and '-'."),
        gpu: str = typer.Option(None, "--gpu", help="MODEL[:COUNT], e.g. H100:8 (none: CPU)."),
        image: str = typer.Option(None, "--image", help="An OCI image reference."),
        disk: str = typer.Option(DEFAULT_DISK, "--disk", help="The pod's disk, e.g. 100GiB."),
        cpu: float = typer.Option(
            None, "--cpu", min=0.01, help="Cores (default: 1 per GPU, at least 1)."
        ),
        memory: str = typer.Option(None, "--memory", help="e.g. 64GiB (default: 4 GiB per GPU)."),
        command: str = typer.Option(None, "--command", help="Run with sh -c (default: wait)."),
        tier: str = typer.Option(
            "on-demand", "--tier", help="on-demand, interruptible or reserved."
        ),
        bid: float = typer.Option(None, "--bid", help="Interruptible: $ per GPU-hour."),
        max_price: float = typer.Option(None, "--max-price", help="$ per GPU-hour at most."),
        region: str = REGION,
        min_reliability: float = MIN_RELIABILITY,
        prefer: str = PREFER,
        max_carbon: int = MAX_CARBON,
        verified: bool = VERIFIED,
        port: list[str] = typer.Option([], "--port", help="PORT/http or PORT/tcp (repeat)."),
        ssh_key: list[Path] = typer.Option([], "--ssh-key", help="A public key file (repeat)."),
        env: list[str] = typer.Option([], "--env", help="KEY=VALUE (repeat)."),
        volume: list[str] = typer.Option([], "--volume", help="NAME:/path (repeat)."),
        wait: bool = WAIT,
        timeout: float = TIMEOUT,
        as_json: bool = JSON,
    ) -> None:
        """Create a pod: the market places it, and it runs (and is billed per ms) until you
        stop it. Exits 1 when no host the exchange knows could ever run it (it stays
        pending, in case one joins); --wait waits until it runs."""
        if name_arg and name and name_arg != name:
            raise typer.BadParameter(
                f"two names given ({name_arg!r} and --name {name!r}); give one", param_hint="NAME"
            )
        name = name or name_arg
        if not name:
            raise typer.BadParameter(
                "a pod needs a name: `crucible pod create NAME` (or --name NAME)",
                param_hint="NAME",
            )
        check_market_options(min_reliability, max_carbon)
        _check_wait(wait, timeout)
        pod = Pod.create(
            name,
            gpu=gpu,
            image=image,
            disk=disk,
            cpu=cpu,
            memory=memory,
            command=command,
            env=parse_env(env),
            ports=port,
            ssh_keys=ssh_keys_of(ssh_key),
            volumes=volumes_of(volume),
            tier=tier,
            bid=bid,
            max_price=max_price,
            region=region,
            min_reliability=min_reliability,
            prefer=prefer,
            max_carbon_g_per_kwh=max_carbon,
            verified=verified,
            client=_client(),
        )
        try:
            settled = _settled(pod, wait, timeout)
        except ResourcesUnsatisfiableError:
            latest = pod.info()
            if not latest.unplaceable:
                raise
            # Nothing ran and the command failed: the name is left free for a corrected ask
            # (a pod kept pending took it; Python's Pod.create keeps it, waiting for a host).
            pod.delete()
            raise ResourcesUnsatisfiableError(
                f"pod {latest.name!r} was not created: {latest.reason}"
            ) from None
        _print_settled(settled, as_json)

    @pod_app.command("list")
    def list_(as_json: bool = JSON) -> None:
        """Your pods (deleted ones are gone)."""
        items = [PodInfo.model_validate(p) for p in _client().get("/v1/pods")]
        if as_json:
            print_json([p.model_dump() for p in items])
            return
        table(
            "Pods",
            ["id", "name", "state", "gpu", "disk", "host", "cost"],
            [
                (
                    p.id,
                    p.name,
                    p.state,
                    p.gpu or "cpu",
                    _gib(p.disk_bytes),
                    p.host_id or "-",
                    fmt_usd(p.cost_micros),
                )
                for p in items
            ],
            ids=("id", "host"),
        )

    @pod_app.command("show")
    def show(pod: str = POD, as_json: bool = JSON) -> None:
        """One pod: its state (and why), where it runs, what it costs so far."""
        client = _client()
        info = PodInfo.model_validate(client.get(_path(client, pod)))
        if as_json:
            print_json(info.model_dump())
        else:
            _show(info, client.server_url)

    @pod_app.command("link")
    def link(
        pod: str = POD,
        port: int = typer.Argument(None, help="A published HTTP port (default: all of them)."),
    ) -> None:
        """The secret link to each published HTTP port: whoever has it opens that port in a
        browser, without a token, across stop/start, until the pod is deleted."""
        client = _client()
        info = PodInfo.model_validate(client.get(_path(client, pod)))
        ports = [port] if port is not None else info.http_ports()
        if not ports:
            raise InvalidRequestError(
                f"pod {clean(info.name)} publishes no HTTP port (create it with --port PORT/http)"
            )
        for p in ports:
            got = client.get(f"/v1/pods/{quote(info.id, safe='')}/ports/{p}/link")
            console.print(f"{p}: {clean(str(got['url']))}", soft_wrap=True)

    @pod_app.command("logs")
    def logs(
        pod: str = POD,
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
        as_json: bool = JSON,
    ) -> None:
        """What the pod's command printed (stdout and stderr), oldest first."""
        client = _client()
        path = _path(client, pod)
        after = 0
        while True:
            page = LogPage.model_validate(client.get(f"{path}/logs?after={after}"))
            for x in page.lines:
                if as_json:
                    print_json(x.model_dump())
                else:
                    stream = typer.style(x.stream, fg="red" if x.stream == "stderr" else None)
                    typer.echo(f"{fmt_time(x.ts_ms)} {stream} {clean(x.line)}")
            after = page.next_after
            if len(page.lines) >= 1000:
                continue
            if not follow:
                return
            if PodInfo.model_validate(client.get(path)).state in _FINAL:
                return
            time.sleep(1.0)

    def _act(pod: str, action: str) -> tuple[Client, PodInfo]:
        client = _client()
        return client, PodInfo.model_validate(client.post(f"{_path(client, pod)}/{action}"))

    @pod_app.command("stop")
    def stop(pod: str = POD, as_json: bool = JSON) -> None:
        """Stop a pod (SIGTERM, the grace, SIGKILL). Billing stops with it; its disk stays
        on its host for `crucible pod start`."""
        info = _act(pod, "stop")[1]
        if as_json:
            print_json(info.model_dump())
        else:
            console.print(f"pod {shown(info.name)}: {shown(_state(info))}")

    @pod_app.command("start")
    def start(
        pod: str = POD, wait: bool = WAIT, timeout: float = TIMEOUT, as_json: bool = JSON
    ) -> None:
        """Start a stopped, preempted or failed pod: the market is asked again. Exits 1 when
        no host the exchange knows could ever run it; --wait waits until it runs."""
        _check_wait(wait, timeout)
        client, info = _act(pod, "start")
        _print_settled(_settled(Pod(info, client), wait, timeout), as_json)

    def _running(client: Client, pod: str) -> tuple[PodInfo, str]:
        """The pod and its running container, which access sessions reach."""
        info = PodInfo.model_validate(client.get(_path(client, pod)))
        if info.state != "running" or info.container_id is None:
            raise ConflictError(
                f"pod {clean(info.name)} is {info.state}, not running: only a running pod can "
                f"be reached (start it with `crucible pod start {clean(info.name)}`)"
            )
        return info, info.container_id

    def _container_of(pod: str) -> str:
        return _running(_client(), pod)[1]

    @pod_app.command("exec", context_settings=PASSTHROUGH)
    def exec_(
        pod: str = POD,
        command: list[str] = typer.Argument(None, help="The command, after --."),
        interactive: bool = typer.Option(
            False, "-i", "--interactive", help="Send this terminal's input (stdin)."
        ),
        tty: bool = typer.Option(False, "-t", "--tty", help="A terminal (with -i: -it)."),
    ) -> None:
        """Run a command in the pod: `crucible pod exec POD -- CMD ARGS` (streams stdin with
        -i, stdout and stderr; exits with its status); `-it POD` for a shell."""
        exec_in(lambda: _container_of(pod), command, interactive=interactive, tty=tty, what="pod")

    @pod_app.command("port-forward")
    def port_forward(
        pod: str = POD,
        ports: str = typer.Argument(..., help="LOCAL[:REMOTE], e.g. 8888 or 8080:80."),
        address: str = typer.Option("127.0.0.1", "--address", help="Local address to listen on."),
    ) -> None:
        """Forward a local TCP port to a port inside the pod (relayed by the control plane)."""
        port_forward_to(lambda: _container_of(pod), pod, ports, address)

    @pod_app.command("proxy")
    def proxy(
        pod: str = typer.Argument(..., help="The pod's name or id (OpenSSH's %h)."),
        user: str = typer.Option(None, "--user", help="The login name ssh will send."),
    ) -> None:
        """Connect stdin/stdout to the pod's SSH server, for OpenSSH, scp, rsync and VS Code:
        `ssh -o ProxyCommand='crucible pod proxy %h' crucible@POD`."""
        proxy_to(lambda: _container_of(pod), user)

    @pod_app.command("ssh", context_settings=PASSTHROUGH)
    def ssh(
        pod: str = POD,
        command: list[str] = typer.Argument(None, help="A command to run, after --."),
        identity: str = typer.Option(
            None, "-i", "--identity", help="The private key (default: ssh's own choice)."
        ),
    ) -> None:
        """SSH into the pod with your account's keys (`crucible ssh-key add`) or the pod's
        own (`--ssh-key` at create): a login shell, or `-- CMD`."""

        def target() -> str:
            client = _client()
            info, container = _running(client, pod)
            # Checked before ssh starts: the server would refuse the session, and ssh would
            # then bury that refusal under its own connection errors.
            if info.ssh_key_count == 0 and not client.get("/v1/ssh-keys"):
                raise InvalidRequestError(
                    f"no SSH key can open pod {clean(info.name)}: your account has none and "
                    "the pod was created without --ssh-key. Add yours with `crucible ssh-key "
                    "add ~/.ssh/id_ed25519.pub` (ssh-keygen -t ed25519 makes one)"
                )
            return container

        ssh_to(target, command, identity)

    @pod_app.command("rm")
    def rm(
        pod: str = POD,
        force: bool = typer.Option(False, "--force", "-f", help="Delete it even if it runs."),
    ) -> None:
        """Delete a pod and its disk; its name is free again. A running pod is refused
        without --force (`crucible pod stop` stops it and keeps the disk)."""
        client = _client()
        path = _path(client, pod)
        if not force:
            info = PodInfo.model_validate(client.get(path))
            if info.state in _RUNS:
                name = clean(info.name)
                raise ConflictError(
                    f"pod {name} is {info.state}: `crucible pod rm` deletes it and its disk. "
                    f"`crucible pod stop {name}` stops it and keeps the disk; "
                    f"`crucible pod rm --force {name}` deletes it anyway"
                )
        client.transport.delete(path)
        console.print(f"pod {shown(pod)} deleted")

    pod_app.command("delete", hidden=True)(rm)  # the verb of the API and of Pod.delete()


def _cores(n: float) -> str:
    return f"{n:g} core" + ("" if n == 1 else "s")

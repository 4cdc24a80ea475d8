"""What holds a TCP port, for a clear "port taken" message: another Crucible exchange (and
its home), another process (its pid and command), or "another process" when this machine
does not say (another user's process, or not Linux)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

from crucible.errors import Error, SettingError

__all__ = ["describe_port_holder", "listening_pid", "port_free", "port_taken_error"]

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be listened on now: False when something holds the port;
    a host that is not an address of this machine, or a port that needs privileges, is an
    error naming that instead (both were reported as "port taken")."""
    if not 1 <= port <= 65535:
        raise SettingError(f"port {port} is not a port: give one from 1024 to 65535 with --port")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except socket.gaierror as exc:
            raise SettingError(
                f"cannot listen on {host!r}: {exc.strerror}. Give an address of this machine "
                "(127.0.0.1 for this machine only, 0.0.0.0 for every interface) with --host or "
                "CRUCIBLE_BIND_HOST"
            ) from None
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise SettingError(
                    f"cannot listen on {host}: it is not an address of this machine. Give one "
                    "that is (127.0.0.1, 0.0.0.0 or an interface's) with --host or "
                    "CRUCIBLE_BIND_HOST"
                ) from None
            if exc.errno == errno.EACCES:
                raise SettingError(
                    f"cannot listen on port {port}: {exc.strerror} (ports below 1024 need "
                    "privileges); choose a port above 1023 with --port or CRUCIBLE_PORT"
                ) from None
            return False
    return True


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 10 or fields[3] != _LISTEN:
                    continue
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def listening_pid(port: int, proc: Path = Path("/proc")) -> int | None:
    """The pid of a process listening on ``port`` that this user may inspect, else None."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return int(entry.name)
    return None


def _command(pid: int, proc: Path) -> list[str]:
    try:
        return [a for a in (proc / str(pid) / "cmdline").read_bytes().decode().split("\0") if a]
    except (OSError, UnicodeDecodeError):
        return []


def _crucible_home(pid: int, proc: Path) -> str | None:
    """The home of a Crucible process: its CRUCIBLE_HOME, else the default of its user."""
    try:
        raw = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    env = dict(
        item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
    )
    home = env.get("CRUCIBLE_HOME") or (
        str(Path(env["HOME"]) / ".crucible") if "HOME" in env else None
    )
    return None if home is None else "".join(c if c.isprintable() else "?" for c in home)


def _lock_holder(home: str | None) -> int | None:
    """The pid of the exchange that holds ``home``'s lock (the `crucible up` supervising the
    control plane found on the port), if any."""
    if home is None:
        return None
    from crucible.cli._home_lock import running_exchange_at

    running = running_exchange_at(Path(home))
    return running.pid if running is not None and running.pid else None


def describe_port_holder(port: int, *, crucible_answers: bool, proc: Path = Path("/proc")) -> str:
    """Who holds ``port``, in words: "another Crucible exchange (pid 12, home /x; stop it with
    ...)", "pid 12 (nginx -g ...)", or "another process"."""
    pid = listening_pid(port, proc)
    if pid is None:
        return "another Crucible exchange" if crucible_answers else "another process"
    argv = _command(pid, proc)
    text = " ".join(argv)
    if "crucible" in text and ({"up", "server"} & set(argv)):
        home = _crucible_home(pid, proc)
        holder = _lock_holder(home)
        if home is None:
            return f"another Crucible exchange (pid {pid})"
        if holder is None:  # a `crucible server` given its own database
            return f"another Crucible exchange (pid {pid}, home {home})"
        return (
            f"another Crucible exchange (pid {holder}, home {home}; stop it with "
            f"`CRUCIBLE_HOME={home} crucible down`)"
        )
    # Another program's command line: no control characters reach the terminal.
    text = "".join(c if c.isprintable() else "?" for c in text)
    shown = text if len(text) <= 80 else text[:77] + "..."
    return f"pid {pid} ({shown})" if shown else f"pid {pid}"


def _next_free(host: str, port: int) -> int | None:
    for candidate in range(port + 1, min(port + 50, 65_536)):
        if port_free(host, candidate):
            return candidate
    return None


def port_taken_error(host: str, port: int, *, crucible_answers: bool, command: str) -> Error:
    """The error for a taken port: which port, what holds it, how to choose another."""
    holder = describe_port_holder(port, crucible_answers=crucible_answers)
    spare = _next_free(host, port)
    example = f"CRUCIBLE_PORT={spare} {command}" if spare else f"CRUCIBLE_PORT=<port> {command}"
    return Error(
        f"port {port} on {host} is taken by {holder}. Choose another port for this exchange: "
        f"`{example}` (or set CRUCIBLE_PORT in your environment)"
    )

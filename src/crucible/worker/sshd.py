"""An SSH server for one access session, run inside the container: ``python -m
crucible.worker.sshd`` with stdin/stdout being the session (the agent relays them).

It runs the host's ``dropbear`` (Debian's ``dropbear-bin``; the sandbox sees the host's
``/usr`` read-only) in inetd mode (``-i``), so the container needs no SSH server of its own
and no listening port. Public-key logins only (``-s``), with the account's registered keys,
which the agent passes in ``CRUCIBLE_SSH_KEYS``: they are written to ``~/.ssh/authorized_keys``
(replacing what was there). The container's user may have no entry in ``/etc/passwd`` (a
sandbox has none): ``libnss_wrapper`` (Debian's ``libnss-wrapper``) gives dropbear one, for
the login name the client sent and for ``crucible`` and ``root``, all the container's uid.
The host key is made once per sandbox (under ``$TMPDIR``) with ``dropbearkey``.

dropbear does not pass ``LD_PRELOAD`` on to a session, and OpenSSH's ``sftp-server`` (``scp``
and ``sftp``) and a legacy ``scp -t`` refuse to run for a uid without a name ("No user found
for uid 1000"). Every session therefore starts through a forced command (dropbear's ``-c``,
the client's command in ``SSH_ORIGINAL_COMMAND``): :data:`_SESSION` gives those two the
wrapper, and runs anything else (a command, or a login shell) as dropbear would have.

Exit status 127 with a line on stderr when the host lacks dropbear or nss_wrapper.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["main"]

_DROPBEAR = ("/usr/sbin/dropbear", "/usr/bin/dropbear", "/sbin/dropbear")
_NSS_WRAPPER = (
    "/usr/lib/*/libnss_wrapper.so",
    "/usr/lib64/libnss_wrapper.so",
    "/usr/lib/libnss_wrapper.so",
)


def _find(candidates: tuple[str, ...]) -> str | None:
    for pattern in candidates:
        for path in sorted(glob.glob(pattern)):
            if os.access(path, os.R_OK):
                return path
    return None


def _fail(message: str) -> int:
    sys.stderr.write(f"crucible: {message}\n")
    sys.stderr.flush()
    return 127


def _login_shell() -> str:
    """$SHELL, else bash, else sh: the first that dropbear accepts (it refuses a shell not in
    /etc/shells, and without that file knows only /bin/sh and /bin/csh) and that exists."""
    try:
        with open("/etc/shells", encoding="utf-8") as f:
            valid = {line.strip() for line in f if line.startswith("/")}
    except OSError:
        valid = {"/bin/sh", "/bin/csh"}
    for shell in (os.environ.get("SHELL", ""), "/bin/bash", "/usr/bin/bash", "/bin/sh"):
        if shell in valid and os.access(shell, os.X_OK):
            return shell
    return "/bin/sh"


# The forced command of every session, run by the login shell (POSIX sh). The SFTP subsystem
# arrives as dropbear's compiled-in sftp-server path.
_SESSION = """\
crucible_ssh_cmd=$SSH_ORIGINAL_COMMAND
unset SSH_ORIGINAL_COMMAND
case $crucible_ssh_cmd in
  */sftp-server|scp\\ *)
    LD_PRELOAD={nss} NSS_WRAPPER_PASSWD={passwd} NSS_WRAPPER_GROUP={group}
    export LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP ;;
esac
case $crucible_ssh_cmd in
  '') unset crucible_ssh_cmd; exec "$SHELL" -l ;;
esac
exec "$SHELL" -c "$crucible_ssh_cmd"
"""


def main() -> int:
    keys = os.environ.pop("CRUCIBLE_SSH_KEYS", "")
    login = os.environ.pop("CRUCIBLE_SSH_USER", "crucible")
    dropbear = shutil.which("dropbear") or _find(_DROPBEAR)
    if dropbear is None:
        return _fail("no SSH server here: the host needs dropbear (apt-get install dropbear-bin)")
    keygen = shutil.which("dropbearkey") or _find(("/usr/bin/dropbearkey",))
    nss = _find(_NSS_WRAPPER)
    if nss is None:
        return _fail(
            "the host lacks libnss_wrapper, which the SSH server needs to name the "
            "container's user (apt-get install libnss-wrapper)"
        )
    uid, gid = os.getuid(), os.getgid()
    home = Path(os.environ.get("HOME") or os.getcwd())
    state = Path(tempfile.gettempdir()) / f".crucible-ssh-{uid}"
    state.mkdir(mode=0o700, exist_ok=True)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    tmp = ssh_dir / f".authorized_keys.{os.getpid()}"
    tmp.write_text(keys.strip() + "\n", encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(authorized)
    shell = _login_shell()
    names = dict.fromkeys([login, "crucible", "root"])
    (state / "passwd").write_text(
        "".join(f"{n}:x:{uid}:{gid}:crucible:{home}:{shell}\n" for n in names),
        encoding="utf-8",
    )
    (state / "group").write_text(f"crucible:x:{gid}:\n", encoding="utf-8")
    session = state / "session.sh"
    session.write_text(
        _SESSION.format(
            nss=shlex.quote(nss),
            passwd=shlex.quote(str(state / "passwd")),
            group=shlex.quote(str(state / "group")),
        ),
        encoding="utf-8",
    )
    hostkey = state / "host_key_ed25519"
    if not hostkey.exists() and keygen is not None:
        subprocess.run(
            [keygen, "-t", "ed25519", "-f", str(hostkey)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "LD_PRELOAD": nss,
        "NSS_WRAPPER_PASSWD": str(state / "passwd"),
        "NSS_WRAPPER_GROUP": str(state / "group"),
    }
    # -i: inetd mode (the session is stdin/stdout; it logs to syslog only); -s: keys only;
    # -m: no motd; -R: make the host key if dropbearkey could not; -c: every session starts
    # with the session script.
    forced = f". {shlex.quote(str(session))}"
    argv = [dropbear, "-i", "-s", "-m", "-R", "-r", str(hostkey), "-c", forced]
    os.execve(dropbear, argv, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())

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

Exit status 127 with a line on stderr when the host lacks dropbear or nss_wrapper.
"""

from __future__ import annotations

import glob
import os
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
    # -m: no motd; -R: make the host key if dropbearkey could not.
    argv = [dropbear, "-i", "-s", "-m", "-R", "-r", str(hostkey)]
    os.execve(dropbear, argv, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())

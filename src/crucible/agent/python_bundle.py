"""The agent's own Python, brought into a pod's sandbox whose OCI image has none.

A pod's supervisor (:mod:`crucible.worker.pod`) is Python, but the pod's image need not be:
``ubuntu:24.04``, a CUDA runtime image or nginx hold no Python, or one too old or too
different for Crucible's worker. So a pod from an OCI image always runs its supervisor (and
the sandbox's zygote) with the agent's own interpreter, brought in the way
:mod:`crucible.agent.ssh_bundle` brings dropbear (:mod:`crucible.agent.host_bundle`):

- :class:`PythonBundle` copies, once per agent, the interpreter's binary, every shared
  library it and the extension modules of its standard library and site-packages need, and
  the host's dynamic loader into ``<agent_dir>/python-bundle/<hash>``, which the sandbox sees
  read-only at :data:`PYTHON_HOME`;
- the standard library is bound read-only at ``PYTHON_HOME/lib/python3.X`` (the layout
  ``PYTHONHOME`` expects), and the agent's site-packages (Crucible and its dependencies) at
  ``/crucible/lib/<i>``, as for a function whose image has the agent's Python version;
- the zygote starts through the bundled loader with ``--library-path``
  (:func:`python_argv`) and ``PYTHONHOME`` in its own environment only: the forked
  supervisor replaces its environment with the container's, and starts the pod's command
  with the image's environment, so no ``PYTHON*`` or ``LD_*`` variable reaches it, and the
  image's programs load with the image's own libc.

Functions still run with the image's own Python (their code imports the image's packages):
:func:`crucible.agent.oci.python.require_python`.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path

from crucible.agent.host_bundle import build_bundle, ldd_closure, run_prefix
from crucible.errors import SandboxUnavailableError

__all__ = ["PYTHON_HOME", "PythonBundle", "PythonRuntime", "python_argv"]

PYTHON_HOME = "/crucible/python"
_TAG = f"python{sys.version_info[0]}.{sys.version_info[1]}"
_SO_SUFFIXES = (".so",)


def python_argv(home: str = PYTHON_HOME) -> list[str]:
    """The command line that starts the bundled interpreter inside a sandbox."""
    return [*run_prefix(home, "libs"), f"{home}/bin/{_TAG}"]


@dataclass(frozen=True)
class PythonRuntime:
    """What a sandbox needs to run the bundled interpreter."""

    bundle: Path  # host directory seen at PYTHON_HOME
    stdlib: Path  # host directory seen at PYTHON_HOME/lib/python3.X

    @property
    def mounts(self) -> list[tuple[Path, str]]:
        """(host directory, path inside) to bind read-only, in this order."""
        return [(self.bundle, PYTHON_HOME), (self.stdlib, f"{PYTHON_HOME}/lib/{_TAG}")]

    @property
    def argv(self) -> list[str]:
        return python_argv()

    @property
    def env(self) -> dict[str, str]:
        """The zygote's own environment for it (never a container's)."""
        return {"PYTHONHOME": PYTHON_HOME}


def _extension_modules(dirs: list[str], skip: str) -> list[str]:
    out: list[str] = []
    for d in dirs:
        for dirpath, subdirs, files in os.walk(d):
            subdirs[:] = [s for s in subdirs if os.path.join(dirpath, s) != skip]
            out += [os.path.join(dirpath, f) for f in files if f.endswith(_SO_SUFFIXES)]
    return sorted(out)


class PythonBundle:
    """The agent's interpreter and its libraries, copied once under ``root``."""

    def __init__(self, root: Path, site_dirs: list[str]) -> None:
        self.root = root
        self.site_dirs = site_dirs  # the agent's site-packages (bound at /crucible/lib/<i>)
        self._lock = threading.Lock()
        self._built: PythonRuntime | None = None

    def ensure(self) -> PythonRuntime:
        """The bundle, built on first use; raises :class:`SandboxUnavailableError` saying
        why when this host cannot make one."""
        with self._lock:
            if self._built is None:
                self._built = self._build()
            return self._built

    def _build(self) -> PythonRuntime:
        binary = os.path.realpath(sys.executable)
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        if not os.access(binary, os.X_OK) or not (stdlib / "os.py").is_file():
            raise SandboxUnavailableError(
                f"this host cannot run pods from images without Python: its agent's "
                f"interpreter ({binary}) or standard library ({stdlib}) is not readable"
            )
        libs: dict[str, str] = {}
        skip = str(stdlib / "site-packages")
        loader = ldd_closure(
            # Not the base interpreter's own site-packages: the agent's are its venv's.
            [binary, *_extension_modules([str(stdlib), *self.site_dirs], skip)],
            libs,
        )
        if loader is None:
            raise SandboxUnavailableError(
                "this host cannot run pods from images without Python: no dynamic loader "
                f"found for {binary} (a static interpreter is not supported)"
            )
        # A wheel's own libraries (numpy.libs/, torch/lib/) stay where they are: bound with
        # their site-packages, found through their modules' $ORIGIN run paths.
        sites = [os.path.realpath(d).rstrip("/") + "/" for d in [*self.site_dirs, skip]]
        files = {f"bin/{_TAG}": binary, "ld.so": loader}
        for name, path in libs.items():
            if not os.path.realpath(path).startswith(tuple(sites)):
                files[f"libs/{name}"] = path
        bundle = build_bundle(self.root, files, dirs=["libs", f"lib/{_TAG}"])
        return PythonRuntime(bundle=bundle, stdlib=stdlib)

"""JupyterLab in a pod, opened in your browser through the exchange.

    python examples/jupyter_pod.py            # makes the pod `notebook` (or finds it); its link
    crucible pod link notebook                # the link again, later
    crucible pod rm -f notebook               # when done (or: crucible pod stop notebook)

The pod publishes port 8888 (``--port 8888/http``), so the exchange serves it at the pod's
own URL, ``/pods/POD/ports/8888/``, which stays the same when the pod is stopped and started
again. The pod learns that path from ``$CRUCIBLE_PORT_8888_PATH`` and JupyterLab serves
under it (``--ServerApp.base_url``), so its pages, assets, REST API and kernels' WebSockets
all work through the exchange. The exchange guards the URL (your token, or the port's secret
link, which this prints: open it in a browser), so Jupyter's own token is off; Jupyter's
XSRF and origin checks stay on (the exchange passes Jupyter's cookies and the browser's
``Host``).

Nothing is downloaded when the pod starts: ``jupyterlab`` and ``ipykernel`` must be in the
pod's Python: without an image, the host's (the agent's interpreter is the pod's ``python``;
``PYTHON=/path/to/python`` names another, as the host sees it); with an image of yours, its
``python``: ``IMAGE=127.0.0.1:5000/jupyter python examples/jupyter_pod.py``.

tests/e2e/test_jupyter_pod_e2e.py runs this pod, opens the link in Chromium, runs a cell
and reads its output.
"""

from __future__ import annotations

import os
import shlex

PORT = 8888


def jupyter_command(port: int = PORT, python: str = "python") -> str:
    """The pod's command: JupyterLab on ``port``, under the path the exchange publishes it
    at (``$CRUCIBLE_PORT_{port}_PATH``, set in the pod for each ``PORT/http``)."""
    argv = [
        python,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        # The exchange authenticates every request (token or secret link): Jupyter's own
        # token would be a second login.
        "--IdentityProvider.token=",
        # Requests arrive with the browser's Host (the exchange's name), not localhost.
        "--ServerApp.allow_remote_access=True",
        "--allow-root",  # a sandbox's user is its own; the process runtime may be root
    ]
    base_url = f'--ServerApp.base_url="$CRUCIBLE_PORT_{port}_PATH"'
    return "exec " + " ".join(shlex.quote(a) for a in argv) + " " + base_url


def pod_python() -> str:
    """The pod's Python: ``$PYTHON`` when set, else ``python``: in a pod without an image, the
    host's own (the agent's interpreter comes first on a pod's PATH); in an image, its own."""
    return os.environ.get("PYTHON") or "python"


def main() -> None:
    import crucible

    try:
        pod = crucible.Pod.create(
            "notebook",
            image=os.environ.get("IMAGE"),
            command=jupyter_command(python=pod_python()),
            ports=[f"{PORT}/http"],
        )
    except crucible.ConflictError:
        # Run before: the pod is there (`crucible pod rm notebook` for a fresh one).
        pod = crucible.Pod.from_name("notebook")
        if pod.info().state in ("stopped", "preempted", "failed"):
            pod.start()
    info = pod.wait()
    if info.state != "running":
        raise SystemExit(f"pod {pod.name} is {info.state}: {info.reason}; see crucible pod logs")
    print(f"JupyterLab (give it a few seconds to start): {pod.port_link(PORT)}")
    print(f"with your token (Authorization: Bearer ...): {pod.port_url(PORT)}")


if __name__ == "__main__":
    main()

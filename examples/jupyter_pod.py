"""Jupyter in a pod, reached through the exchange's published port (kernels included).

    python examples/jupyter_pod.py            # creates the pod `notebook`, prints the link
    crucible pod rm notebook                  # when done (or: crucible pod stop notebook)

The pod runs Jupyter Server on port 8888 inside it, published by the exchange at
``/ports/CONTAINER/8888/``. The exchange guards that URL (your token, or the port's secret
link, which this prints), so Jupyter's own token is off. Jupyter's REST API and its kernels'
WebSockets work through it: a program with the link (or your token) starts kernels and runs
cells (see the test below). The exchange strips ``/ports/CONTAINER/8888`` before the request
reaches the pod, so Jupyter serves at ``/`` and its browser pages, whose links are absolute,
do not load under the prefix yet: for the browser UI use
``crucible pod port-forward notebook 8888`` and open http://localhost:8888/.

Nothing is downloaded when the pod starts: ``jupyter_server`` and ``ipykernel`` must be in
the pod's Python: without an image, the host's (the agent's interpreter is the pod's
``python``; ``PYTHON=/path/to/python`` names another, as the host sees it); with an image of
yours, its ``python``: ``IMAGE=127.0.0.1:5000/jupyter python examples/jupyter_pod.py``.

tests/e2e/test_access_e2e.py runs the same arguments in a container and one cell through
the kernel's WebSocket over the published port.
"""

from __future__ import annotations

import os
import shlex
import time

PORT = 8888


def jupyter_argv(port: int = PORT) -> list[str]:
    """The Python arguments that serve Jupyter on ``port`` for the exchange to publish."""
    return [
        "-m",
        "jupyter_server",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        # The exchange authenticates every request (token or secret link): Jupyter's own
        # token would be a second login. Its origin and XSRF checks see the exchange's
        # host, not the browser's, so they are off too.
        "--IdentityProvider.token=",
        "--ServerApp.allow_origin=*",
        "--ServerApp.disable_check_xsrf=True",
        "--allow-root",  # a sandbox's user is its own; the process runtime may be root
    ]


def pod_python() -> str:
    """The pod's Python: ``$PYTHON`` when set, else ``python``: in a pod without an image, the
    host's own (the agent's interpreter comes first on a pod's PATH); in an image, its own."""
    return os.environ.get("PYTHON") or "python"


def main() -> None:
    import crucible

    image = os.environ.get("IMAGE")
    command = f"exec {shlex.quote(pod_python())} " + " ".join(
        shlex.quote(a) for a in jupyter_argv()
    )
    pod = crucible.Pod.create(
        "notebook",
        image=image,
        command=command,
        ports=[f"{PORT}/http"],
    )
    while (info := pod.info()).state not in ("running", "failed", "stopped", "preempted"):
        time.sleep(0.5)
    if info.state != "running" or info.container_id is None:
        raise SystemExit(f"pod {pod.name} is {info.state}: {info.reason}; see crucible pod logs")
    from crucible.sdk._client import Client

    link = Client.from_settings().transport.get(
        f"/v1/containers/{info.container_id}/ports/{PORT}/link"
    )
    print(f"Jupyter (give it a few seconds to start): {link['url']}")


if __name__ == "__main__":
    main()

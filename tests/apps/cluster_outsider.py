"""An outsider's program for the cluster network tests: tries to connect to each
``HOST:PORT`` of its arguments and prints one JSON object, target → ``connected:<answer>``
or the error (ECONNREFUSED, ENETUNREACH, timeout, ...)."""

from __future__ import annotations

import errno
import json
import socket
import sys


def main() -> int:
    out = {}
    for target in sys.argv[1:]:
        host, port = target.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=3) as conn:
                out[target] = "connected:" + conn.makefile().readline().strip()
        except OSError as exc:
            out[target] = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    print("outsider " + json.dumps(out, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A cluster member's program for the cluster tests: an all-reduce of RANK + 1 over the
cluster, from the environment a cluster gives each member (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT). ``plain``: over TCP sockets (rank 0 gathers, sums and answers); ``torch``:
torch.distributed with the gloo backend. Prints ``sum=N`` and exits 0, then sleeps when
``--stay`` is given (a pod that stays up). With ``--serve`` it then also answers
``member RANK`` on MASTER_PORT + 1, and every other rank prints what rank 0 answered there
(``reached rank 0: member 0``)."""

from __future__ import annotations

import os
import socket
import sys
import time


def plain(rank: int, world: int, addr: str, port: int) -> int:
    value = rank + 1
    if rank == 0:
        with socket.create_server(("", port), reuse_port=False) as srv:
            srv.settimeout(120)
            peers = []
            total = value
            while len(peers) < world - 1:
                conn, _ = srv.accept()
                total += int(conn.makefile().readline())
                peers.append(conn)
            for conn in peers:
                conn.sendall(f"{total}\n".encode())
                conn.close()
            return total
    deadline = time.monotonic() + 120
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with conn:
        conn.sendall(f"{value}\n".encode())
        return int(conn.makefile().readline())


def with_torch(rank: int, world: int) -> int:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    dist.destroy_process_group()
    return int(t.item())


def serve(rank: int, addr: str, port: int) -> None:
    import threading

    srv = socket.create_server(("", port))

    def answer() -> None:
        while True:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(f"member {rank}\n".encode())

    threading.Thread(target=answer, daemon=True).start()
    if rank == 0:
        return
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection((addr, port), timeout=5) as conn:
                print(f"reached rank 0: {conn.makefile().readline().strip()}", flush=True)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    print(f"rank={rank} world={world} master={addr}:{port}", flush=True)
    mode = sys.argv[1] if len(sys.argv) > 1 else "plain"
    total = with_torch(rank, world) if mode == "torch" else plain(rank, world, addr, port)
    print(f"sum={total}", flush=True)
    if "--serve" in sys.argv:
        serve(rank, addr, port + 1)
    if "--stay" in sys.argv:
        while True:
            time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

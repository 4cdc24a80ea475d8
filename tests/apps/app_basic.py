"""Functions the end-to-end tests run in real containers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import crucible

from app_helpers import triple

app = crucible.App("basic")


class CustomError(Exception):
    """Defined in the shipped module, so the SDK can rebuild it."""


@app.function()
def square(x: int) -> int:
    return x * x


@app.function()
def add(a: int, b: int, c: int = 0) -> int:
    return a + b + c


@app.function()
def uses_helper(x: int) -> int:
    return triple(x)


@app.function()
def boom(x: int) -> int:
    raise CustomError(f"bad input {x}")


@app.function()
def quits(code: int) -> int:
    import sys

    sys.exit(code)


@app.function()
def fails_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"{x} is odd")
    return x


@app.function(timeout=1)
def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function(timeout=30)
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ.get("CRUCIBLE_CONTAINER_ID", "")


@app.function()
async def async_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@app.function()
def make_bytes(n: int) -> bytes:
    return b"x" * n


@app.function()
def length(data: bytes) -> int:
    return len(data)


@app.function(retries=crucible.Retries(max_retries=2, initial_delay=0.1))
def flaky(marker: str, failures: int) -> int:
    """Fails ``failures`` times (counted in a file), then succeeds: retries at work."""
    path = Path(marker)
    count = int(path.read_text()) if path.exists() else 0
    path.write_text(str(count + 1))
    if count < failures:
        raise RuntimeError(f"failure {count + 1}")
    return count + 1


@app.function(retries=crucible.Retries(max_retries=1, initial_delay=0.1))
def dies_once(marker: str) -> str:
    """The first attempt kills its own worker with SIGKILL; the retry succeeds."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@app.function(gpu="H100:2")
def visible_gpus() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


@app.function(gpu=["B200", "L4"])
def fallback_gpu() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


@app.function(cpu=512)
def too_big() -> int:
    return 1


@app.function()
def secrets_visible() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "TOKEN" in k and "CONTAINER" not in k}


@app.function()
def chatty(n: int) -> int:
    for i in range(n):
        print(f"line {i} of {n}")
    print("a warning", file=sys.stderr)
    return n


@app.function(timeout=60)
def chatty_slowly(n: int, pause: float) -> int:
    """A line every ``pause`` seconds: its logs are shipped to the server all along."""
    for i in range(n):
        print(f"line {i}", flush=True)
        time.sleep(pause)
    return n


@app.function()
def sigpipe_ignored() -> bool:
    """Whether the worker ignores SIGPIPE, as every Python process does."""
    return signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN


@app.function()
def chatty_children() -> int:
    """Output that does not go through Python's sys.stdout: a subprocess's, and a write to
    the descriptor itself (a C library's)."""
    import subprocess

    print("from python")
    subprocess.run(["sh", "-c", "echo child-out; echo child-err >&2"], check=True)
    subprocess.run(["sh", "-c", "echo given-stdout"], stdout=sys.stdout, check=True)
    os.write(1, b"raw-fd-one\n")
    return 0


@app.function(max_containers=1, timeout=60)
@crucible.concurrent(max_inputs=6)
def overlap(seconds: float) -> tuple[float, float, str]:
    """With several inputs at once in one container, their runs overlap."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time(), os.environ["CRUCIBLE_CONTAINER_ID"]


@app.function(max_containers=1, timeout=60)
@crucible.concurrent(max_inputs=6)
async def overlap_async(seconds: float) -> tuple[float, float, str]:
    start = time.time()
    await asyncio.sleep(seconds)
    return start, time.time(), os.environ["CRUCIBLE_CONTAINER_ID"]


@app.function(max_containers=1)
@crucible.batched(max_batch_size=8, wait_ms=300)
def double_batch(xs: list[int]) -> list[tuple[int, int]]:
    """Each input's double, and the size of the batch it was in."""
    return [(x * 2, len(xs)) for x in xs]


@app.function(max_containers=1)
@crucible.batched(max_batch_size=4, wait_ms=10)
def short_batch(xs: list[int]) -> list[int]:
    return xs[:-1]  # one result short: every input of the batch fails


@app.function(timeout=60)
def count_up(n: int, fail_at: int = -1, progress: str = ""):  # type: ignore[no-untyped-def]
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"stopped at {i}")
        if progress:
            Path(progress).write_text(str(i))
        yield i


@app.function(timeout=60)
def handshake(workdir: str):  # type: ignore[no-untyped-def]
    """Yields, then waits for the caller to answer (a file) before yielding again: the first
    item must reach the caller while the function still runs."""
    yield "first"
    deadline = time.monotonic() + 20
    while not Path(workdir, "go").exists():
        if time.monotonic() > deadline:  # "first" never reached the caller in time
            yield "no answer"
            return
        time.sleep(0.05)
    yield "second"


@app.function(timeout=60)
def rendezvous(i: int, workdir: str) -> int:
    """Input 0 waits until input 1 has run (a file): it finishes last, whatever the order the
    two started in."""
    if i == 1:
        Path(workdir, "one-ran").write_text("yes")
        return i
    deadline = time.monotonic() + 50
    while not Path(workdir, "one-ran").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return i


@app.function()
def where_am_i() -> tuple[bool, str | None]:
    return crucible.is_local(), crucible.current_function_call_id()

"""The first Crucible app: `crucible run examples/hello.py`."""

import crucible

app = crucible.App("hello")


@app.function(cpu=1, memory="512MiB", timeout=60, retries=2)
def square(x: int) -> int:
    return x * x


@app.local_entrypoint()
def main():
    print(square.remote(7))  # 49, computed in a container
    print(sum(square.map(range(10_000))))  # ordered results, with a progress bar
    call = square.spawn(12)
    print(call.get())  # 144

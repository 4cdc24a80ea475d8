"""Classes: state that lives in the container between calls, with enter and exit hooks.

Run it:   crucible run examples/classes.py

Each container of an ``@app.cls()`` makes one instance of the class. ``@crucible.enter()``
methods run once, before its first input (load a model), ``@crucible.exit()`` ones when the
container stops, and every ``@crucible.method()`` can be called with ``.remote()``,
``.spawn()``, ``.map()`` or ``.local()``. Each set of parameters (``Counter(start=100)``) is
its own pool of containers.
"""

import os

import crucible

app = crucible.App("classes")


@app.cls(timeout=60, max_containers=1)
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.start = start

    @crucible.enter()
    def load(self) -> None:
        # Runs once per container: the expensive setup (weights, a connection) goes here.
        self.count = self.start
        self.container = os.environ.get("CRUCIBLE_CONTAINER_ID", "local")

    @crucible.method()
    def increment(self, by: int = 1) -> int:
        self.count += by  # state kept between calls to the same container
        return self.count

    @crucible.method()
    def where(self) -> str:
        return self.container

    @crucible.exit()
    def unload(self) -> None:
        print(f"container {self.container} stops at count {self.count}")


@app.local_entrypoint()
def main():
    counter = Counter()
    print([counter.increment.remote() for _ in range(3)])  # [1, 2, 3]: one warm instance
    print(counter.increment.remote(by=10))  # 13
    print(list(Counter(start=100).increment.map([1, 2, 3])))  # [101, 103, 106]: its own pool
    print("default pool runs in", counter.where.remote())
    print(Counter().increment.local(5))  # 5: an instance made here, hooks and all

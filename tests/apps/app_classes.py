"""A class with lifecycle hooks and parameters (the @app.cls tests)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import crucible

app = crucible.App("classes")


@app.cls(scaledown_window=60)
class Counter:
    def __init__(self, start: int = 0, marker_dir: str = "") -> None:
        self.start = start
        self.marker_dir = marker_dir

    @crucible.enter()
    def load(self) -> None:
        self.loaded_at = time.time()
        self.count = self.start
        self.container = os.environ.get("CRUCIBLE_CONTAINER_ID", "local")

    @crucible.exit()
    def unload(self) -> None:
        if self.marker_dir:  # written whole, then named: a reader never sees it half written
            done = Path(self.marker_dir, f"exited-{self.container}")
            part = done.with_name(f".{done.name}.part")
            part.write_text(str(self.count))
            os.replace(part, done)

    @crucible.method()
    def bump(self, by: int = 1, times: int = 1) -> tuple[int, str, float]:
        self.count += by * times
        return self.count, self.container, self.loaded_at

    @crucible.method()
    def describe(self) -> str:
        return f"counter from {self.start}"


@app.cls(retries=crucible.Retries(max_retries=2, initial_delay=0.2))
class Broken:
    @crucible.enter()
    def load(self) -> None:
        raise RuntimeError("the weights are missing")

    @crucible.method()
    def predict(self, x: int) -> int:
        return x


@app.cls()
class Greeter:
    """A class with a required parameter: no default pool; each name is its own."""

    def __init__(self, name: str, punctuation: str = "!") -> None:
        self.name = name
        self.punctuation = punctuation

    @crucible.method()
    def hello(self) -> tuple[str, int]:
        return f"hello {self.name}{self.punctuation}", id(self)

    @crucible.method()
    def letters(self, upper: bool = False) -> Iterator[str]:
        """A generator method: streams with .remote_gen()."""
        for letter in self.name:
            yield letter.upper() if upper else letter

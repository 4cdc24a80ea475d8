"""A class whose @enter hook raises in every container (a model that will not load)."""

from __future__ import annotations

import crucible

app = crucible.App("enter-fails")


@app.cls(min_containers=1)  # kept warm: the scheduler replaces each that ends
class Broken:
    @crucible.enter()
    def load(self) -> None:
        raise RuntimeError("the weights are missing")

    @crucible.method()
    def predict(self, x: int) -> int:
        return x


@app.cls(retries=2)  # each failed input is retried: the crash loop fails what is left
class BrokenRetried:
    @crucible.enter()
    def load(self) -> None:
        raise FileNotFoundError("weights.bin missing")

    @crucible.method()
    def predict(self, x: int) -> int:
        return x


@app.cls()
class FailsOnce:
    """Its first container cannot load (a download that failed once); later ones can."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    @crucible.enter()
    def load(self) -> None:
        import pathlib

        path = pathlib.Path(self.marker)
        if not path.exists():
            path.write_text("tried")
            raise ConnectionError("the weights server did not answer")

    @crucible.method()
    def predict(self, x: int) -> int:
        return x

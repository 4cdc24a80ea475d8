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

"""Dynamic batching: many single calls, handled by the function a batch at a time.

Run it:   crucible run examples/batching.py

``@crucible.batched(max_batch_size=8, wait_ms=50)`` makes the container gather up to 8
inputs (waiting at most 50 ms after the first for more) and call the function once with a
list per parameter; it returns a list with one result per input, in order. Callers still
make one call per input and get one result each: batching is the container's business
(think of a GPU model that is as fast on 8 inputs as on 1).
"""

import crucible

app = crucible.App("batching")


@app.function(timeout=60, max_containers=1)
@crucible.batched(max_batch_size=8, wait_ms=50)
def embed(texts: list[str]) -> list[dict]:
    # One call of this function per batch: every input learns the size of its batch.
    return [{"text": t, "vector": [len(t), t.count(" ")], "batch": len(texts)} for t in texts]


@app.local_entrypoint()
def main():
    print(embed.remote("a single input"))  # a batch of one
    sentences = [f"sentence number {i}" for i in range(40)]
    results = list(embed.map(sentences))  # 40 calls, in order, gathered into batches
    assert [r["text"] for r in results] == sentences
    sizes = sorted({r["batch"] for r in results})
    print(f"{len(results)} results; batch sizes seen: {sizes}")

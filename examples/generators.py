"""Generators: a function that yields streams its items to the caller as it yields them.

Run it:   crucible run examples/generators.py

Iterate over ``.remote_gen(...)``: each item arrives within about 50 ms of being yielded,
while the function is still running; an exception raised inside arrives after the items
yielded before it. ``.remote()`` refuses a generator (use ``.remote_gen()``).
"""

import time

import crucible

app = crucible.App("generators")


@app.function(timeout=60)
def countdown(n: int):
    for i in range(n, 0, -1):
        time.sleep(0.05)  # some work between items
        yield i
    yield "liftoff"


@app.function(timeout=60)
def words(text: str):
    for word in text.split():
        yield word.upper()
    raise ValueError("no more words")


@app.local_entrypoint()
def main():
    for item in countdown.remote_gen(5):
        print(item)  # 5, 4, 3, 2, 1, liftoff: each as soon as it is yielded
    got = []
    try:
        for word in words.remote_gen("streams stop cleanly"):
            got.append(word)
    except ValueError as exc:  # the function's own exception type, after its items
        print(got, "then:", exc)

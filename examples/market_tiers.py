"""The market's three tiers: on-demand, interruptible (a bid) and reserved, on fake GPUs.

Run it on an exchange whose host has (fake) GPUs:

    crucible down                                   # if an exchange is already up
    crucible up --fake-gpus 2xH100 --detach
    crucible run examples/market_tiers.py
    crucible statement --kind calls                 # what each call cost, per tier

Fake GPUs are declared by the agent for trying the market on a machine without any (the
functions run on the CPU; ``CUDA_VISIBLE_DEVICES`` still names the GPU each container was
given). Unpriced hosts sell at the catalog's reference price: an H100 is $1.89/hour on
demand, takes bids from half of that, and is reserved at a lower rate for a whole window.
"""

import os
import time

from plain_http import Exchange

import crucible

app = crucible.App("market-tiers")


def _where(tier: str) -> dict:
    return {"tier": tier, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


@app.function(gpu="H100", timeout=60)
def on_demand() -> dict:
    """Pays the host's asking price; never preempted by other renters."""
    return _where("on-demand")


@app.function(gpu="H100", tier="interruptible", bid=1.20, max_price=1.50, timeout=60)
def interruptible() -> dict:
    """Pays its bid ($1.20/GPU-hour); a higher bid or an on-demand request may preempt it
    (SIGTERM, then the call is requeued: register a checkpoint with crucible.on_stop)."""
    crucible.on_stop(lambda: print("preempted: save a checkpoint here"))
    return _where("interruptible")


@app.function(gpu="H100", tier="reserved", timeout=60)
def reserved() -> dict:
    """Runs only inside the account's reservations (paid for the whole window)."""
    return _where("reserved")


@app.local_entrypoint()
def main():
    http = Exchange.from_environment()
    quotes = {
        tier: http.post("/v1/market/quote", {"gpu": "H100", "tier": tier, **extra})
        for tier, extra in (
            ("on_demand", {}),
            ("interruptible", {"bid_micros": 1_200_000}),
            ("reserved", {}),
        )
    }
    if not quotes["on_demand"]["available"]:
        print(
            "No H100 on this exchange: start one with fake GPUs: "
            "`crucible down; crucible up --fake-gpus 2xH100 --detach`"
        )
        print("The market said:", quotes["on_demand"]["message"])
        return
    for tier, quote in quotes.items():
        price = quote["price_micros"]
        shown = f"${price / 1e6:.2f}/GPU-hour" if price is not None else quote["message"]
        print(f"quote {tier:>13}: {shown}")

    print(on_demand.remote())
    print(interruptible.remote())

    # A reservation: one H100 from now for an hour (the shortest window), paid in full when
    # it is made.
    start_ms = int(time.time() * 1000)
    booked = http.post("/v1/reservations", {"gpu": "1xH100", "start_ms": start_ms, "hours": 1})
    print(f"reserved {booked['count']}x{booked['model']} for ${booked['cost_micros'] / 1e6:.4f}")
    print(reserved.remote())

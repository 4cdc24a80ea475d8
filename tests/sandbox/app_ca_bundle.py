"""What a container is given to trust the exchange's certificate (test_ca_bundle.py)."""

from __future__ import annotations

import hashlib
import os

import crucible

app = crucible.App("ca-bundle")


@app.function(timeout=60)
def trusted_bundle() -> tuple[str | None, str | None]:
    """SSL_CERT_FILE as the container sees it, and the sha256 of the file it names."""
    path = os.environ.get("SSL_CERT_FILE")
    if path is None:
        return None, None
    with open(path, "rb") as f:
        return path, hashlib.sha256(f.read()).hexdigest()

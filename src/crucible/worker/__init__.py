"""The entrypoint that runs inside a container (``python -m crucible.worker``)."""

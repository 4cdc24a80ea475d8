"""The ``crucible`` command: one module per command group."""

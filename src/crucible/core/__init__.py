"""The pure cores: scheduling, placement, the market, metering, the ledger, token pricing.

Nothing here does I/O or reads a clock (the time is an argument), and nothing imports
:mod:`crucible.server`, SQLAlchemy or FastAPI (``tests/core`` walks the imports to check).
The server's loop and services, and the simulator, drive these cores.
"""

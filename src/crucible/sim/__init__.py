"""The simulator: a discrete-event loop that drives the real placement and market cores with
a virtual clock (``engine.run``), its scenario files, the openb trace and the report. See
``docs/simulator.md``."""

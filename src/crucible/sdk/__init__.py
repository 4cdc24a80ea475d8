"""What builders import, re-exported from ``crucible``. Modules here are private."""

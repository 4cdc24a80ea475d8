"""Persistence: tables, the engine, and migrations."""

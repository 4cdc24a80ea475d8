"""Services: the logic behind each API resource. Routers stay thin and call these.

A service function takes a SQLAlchemy connection (inside a transaction the caller owns), the
caller's principal where access matters, and plain values; it never does network I/O.
"""

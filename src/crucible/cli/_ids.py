"""Short ids: what the CLI's tables show of an id, and turning one back into the full id.

A full id is a type prefix, ten characters of creation time and twelve random ones
(``ca-0j1b2c3d4e5f6g7h8j9k0m1n``, see protocol/ids.py). Tables show the prefix and the last
eight random characters (``ca-8j9k0m1n``): short enough for an 80-column terminal, and
(40 random bits) unique among anything one account lists. Every command that takes an id
accepts either form; a short one is looked up among what the account can list."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable

from crucible.errors import InvalidRequestError, NotFoundError
from crucible.sdk._client import Client

__all__ = ["SHORT_TAIL", "resolve_id", "short_id", "shorten_ids"]

SHORT_TAIL = 8
_FULL = re.compile(r"^[a-z]{2}-[0-9a-z]{22}$")
_FULL_IN_TEXT = re.compile(r"\b([a-z]{2}-)[0-9a-z]{14}([0-9a-z]{8})\b")
_SHORT = re.compile(rf"^([a-z]{{2}})-([0-9a-z]{{{SHORT_TAIL}}})$")

# How many of the newest calls a short call id is looked up among (the API's page limit).
_CALLS_SEARCHED = 1000


def short_id(full: str | None) -> str:
    """The short form of an id (anything not shaped like an id is returned unchanged)."""
    if not full:
        return ""
    if _FULL.match(full) is None:
        return full
    return f"{full[:3]}{full[-SHORT_TAIL:]}"


def shorten_ids(text: str) -> str:
    """``text`` with every full id in it shown short."""
    if "-" not in text:
        return text
    return _FULL_IN_TEXT.sub(r"\1\2", text)


def _listers(client: Client) -> dict[str, tuple[str, Callable[[], Iterable[str]]]]:
    return {
        # Apps, and the apps pods run in (the statement names those `pod:NAME`).
        "ap": (
            "app",
            lambda: itertools.chain(
                (a.id for a in client.list_apps()),
                (str(p["app_id"]) for p in client.get("/v1/pods")),
            ),
        ),
        "cl": ("cluster", lambda: (c["id"] for c in client.get("/v1/clusters"))),
        "dp": ("deployment", lambda: (d["id"] for d in client.get("/v1/deployments"))),
        "ca": (
            f"call (among your {_CALLS_SEARCHED} newest)",
            lambda: (c.id for c in client.list_calls(limit=_CALLS_SEARCHED)),
        ),
        "ft": ("fine-tune", lambda: (f["id"] for f in client.get("/v1/fine-tunes"))),
        "ho": ("host", lambda: (h["id"] for h in client.get("/v1/hosts"))),
        "pd": ("pod", lambda: (p["id"] for p in client.get("/v1/pods"))),
        "rs": ("reservation", lambda: (r["id"] for r in client.get("/v1/reservations"))),
        "tk": ("token", lambda: (t["id"] for t in client.get("/v1/tokens"))),
    }


def resolve_id(client: Client, value: str) -> str:
    """The full id for ``value``: a full id (or anything not shaped like a short id, such as
    a name) is returned as it is; a short id is looked up among the account's objects of
    its type. Raises NotFoundError when none matches and InvalidRequestError when several
    do (then the full id is needed: ``--json`` prints it)."""
    m = _SHORT.match(value)
    if m is None:
        return value
    prefix, tail = m.groups()
    kind = _listers(client).get(prefix)
    if kind is None:
        return value
    what, lister = kind
    found = sorted({i for i in lister() if i.startswith(prefix + "-") and i.endswith(tail)})
    if not found:
        raise NotFoundError(
            f"no {what} has the short id {value}; give the full id (`--json` prints it)"
        )
    if len(found) > 1:
        raise InvalidRequestError(
            f"the short id {value} matches {len(found)} ids ({', '.join(found)}); give one"
        )
    return found[0]

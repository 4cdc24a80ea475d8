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

__all__ = ["KINDS", "SHORT_TAIL", "resolve_id", "short_id", "shorten_ids"]

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


# What an id's prefix says it is (protocol/ids.py's callers), for "that is a host id".
KINDS = {
    "ac": "an account",
    "ap": "an app",
    "ca": "a call",
    "cl": "a cluster",
    "ct": "a container",
    "dp": "a deployment",
    "fn": "a function",
    "ft": "a fine-tune",
    "ho": "a host",
    "md": "a model",
    "pd": "a pod",
    "rs": "a reservation",
    "se": "a secret",
    "sk": "an SSH key",
    "tk": "a token",
    "vo": "a volume",
}


def resolve_id(client: Client, value: str, kind: str) -> str:
    """The full id for ``value``, an id of the kind whose prefix is ``kind`` (``"ca"``) or,
    where the command also takes one, a name: a full id (or anything not shaped like a
    short id) is returned as it is; a short id is looked up among the account's objects of
    its type. Raises NotFoundError when none matches and InvalidRequestError when several
    do (then the full id is needed: ``--json`` prints it), or when ``value`` is an id of
    another kind (a full one, or a short one that names one of the account's objects):
    "ho-... is a host id; this command takes a call id (ca-...)"."""
    other = _other_kind(client, value, kind)
    if other is not None:
        raise InvalidRequestError(
            f"{value} is {KINDS[other]} id; this command takes {KINDS[kind]} id ({kind}-...)"
        )
    m = _SHORT.match(value)
    if m is None or m.group(1) != kind:
        return value
    prefix, tail = m.groups()
    listed = _listers(client).get(prefix)
    if listed is None:
        return value
    what, lister = listed
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


def _other_kind(client: Client, value: str, kind: str) -> str | None:
    """The prefix of ``value`` when it is an id of a kind other than ``kind``: a full id of
    a known kind, or a short one that one of the account's objects of that kind has (a
    name shaped like a short id, ``ho-abcdefgh``, stays a name)."""
    prefix = value[:2]
    if prefix == kind or prefix not in KINDS:
        return None
    if _FULL.match(value):
        return prefix
    m = _SHORT.match(value)
    listed = _listers(client).get(prefix) if m else None
    if m is None or listed is None:
        return None
    tail = m.group(2)
    return prefix if any(i.endswith(tail) for i in listed[1]()) else None

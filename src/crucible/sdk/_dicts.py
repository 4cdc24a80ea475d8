"""``crucible.Dict``: a durable key/value map shared by the calls and clients of an account.

Keys are encoded canonically (equal keys, equal bytes) when they are made of ``None``,
``bool``, ``int``, ``float``, ``str``, ``bytes`` and tuples of those; other hashable keys are
pickled, which is only stable for the same object structure. Values are pickled by the SDK
and stored as opaque bytes: the exchange never reads them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from crucible.errors import InvalidRequestError
from crucible.protocol.coordination import MAX_VALUE_B64, DictInfo, DictItems
from crucible.protocol.transport import url_part
from crucible.sdk._client import Client
from crucible.sdk._serialization import STORED_ADVICE, deserialize, serialize_value

__all__ = ["Dict", "decode_key", "encode_key"]

_JSON_KEY = b"K"  # canonical keys; anything else is a pickle (whose first byte is 0x80)
_MISSING = object()


def _tag(key: Any) -> Any:
    if key is None or isinstance(key, bool | str):
        return key
    if isinstance(key, int):
        return {"i": str(key)}  # any size, no float coercion
    if isinstance(key, float):
        return {"f": key.hex()}
    if isinstance(key, bytes):
        return {"b": base64.b64encode(key).decode()}
    if isinstance(key, tuple):
        return {"t": [_tag(k) for k in key]}
    raise TypeError


def _untag(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float.fromhex(value["f"])
    if "b" in value:
        return base64.b64decode(value["b"])
    return tuple(_untag(v) for v in value["t"])


def encode_key(key: Any) -> bytes:
    try:
        return _JSON_KEY + orjson.dumps(_tag(key), option=orjson.OPT_SORT_KEYS)
    except TypeError:
        try:
            hash(key)
        except TypeError:
            raise InvalidRequestError(
                f"a Dict key must be hashable, not {type(key).__name__}"
            ) from None
        return serialize_value(key, "a Dict key", "key", STORED_ADVICE)


def decode_key(raw: bytes) -> Any:
    if raw.startswith(_JSON_KEY):
        return _untag(orjson.loads(raw[1:]))
    return deserialize(raw)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class Dict:
    """``Dict.from_name("cache", create_if_missing=True)``; then ``d[key] = value``,
    ``d[key]``, ``key in d``, ``d.get``, ``d.put``, ``d.update``, ``d.pop``, ``len(d)``,
    ``d.keys()``, ``d.values()``, ``d.items()``, ``d.clear()``. Works the same from a
    builder's machine and inside the account's containers."""

    def __init__(self, name: str, client: Client) -> None:
        self.name = name
        self._client = client

    def __repr__(self) -> str:
        return f"Dict.from_name({self.name!r})"

    @classmethod
    def from_name(
        cls, name: str, *, create_if_missing: bool = False, client: Client | None = None
    ) -> Dict:
        client = client or Client.from_settings()
        client.post("/v1/dicts", {"name": name, "create_if_missing": create_if_missing})
        return cls(name, client)

    @staticmethod
    def delete(name: str, *, client: Client | None = None) -> None:
        """Delete the dict ``name`` and everything in it."""
        client = client or Client.from_settings()
        client.transport.request("DELETE", f"/v1/dicts/{url_part(name)}")

    def info(self) -> DictInfo:
        return DictInfo.model_validate(self._client.get(f"/v1/dicts/{self.name}"))

    # -- writing ----------------------------------------------------------------------------
    def _entry(self, key: Any, value: Any) -> dict[str, str]:
        data = _b64(serialize_value(value, f"a value of Dict {self.name!r}", advice=STORED_ADVICE))
        if len(data) > MAX_VALUE_B64:
            raise InvalidRequestError(
                f"a Dict value of {len(data) * 3 // 4} bytes is too large (at most "
                f"{MAX_VALUE_B64 * 3 // 4}); store big data in a blob or volume"
            )
        return {"key": _b64(encode_key(key)), "value": data}

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        """Set ``key``; with ``skip_if_exists``, only if it is not there. True if written."""
        body = {"entries": [self._entry(key, value)], "skip_if_exists": skip_if_exists}
        return bool(self._client.post(f"/v1/dicts/{self.name}/put", body)["written"])

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def update(self, other: Mapping[Any, Any] = (), /, **kwargs: Any) -> None:  # type: ignore[assignment]
        entries = [self._entry(k, v) for k, v in dict(other, **kwargs).items()]
        for start in range(0, len(entries), 1000):
            self._client.post(
                f"/v1/dicts/{self.name}/put", {"entries": entries[start : start + 1000]}
            )

    # -- reading ----------------------------------------------------------------------------
    def get(self, key: Any, default: Any = None) -> Any:
        body = {"keys": [_b64(encode_key(key))]}
        found = DictItems.model_validate(self._client.post(f"/v1/dicts/{self.name}/get", body))
        if not found.entries:
            return default
        return deserialize(base64.b64decode(found.entries[0].value))

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: Any) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        body = {"keys": [_b64(encode_key(key))]}
        found = DictItems.model_validate(self._client.post(f"/v1/dicts/{self.name}/pop", body))
        if not found.entries:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return deserialize(base64.b64decode(found.entries[0].value))

    def __delitem__(self, key: Any) -> None:
        self.pop(key)

    def contains(self, key: Any) -> bool:
        """Whether ``key`` is in the dict (``key in d``; Modal's name)."""
        return key in self

    def len(self) -> int:
        """How many entries the dict holds (``len(d)``; Modal's name)."""
        return len(self)

    def __len__(self) -> int:
        return self.info().entries

    def _pages(self) -> Iterator[tuple[Any, Any]]:
        after: str | None = None
        while True:
            query = f"?after={after}" if after else ""
            page = DictItems.model_validate(self._client.get(f"/v1/dicts/{self.name}/items{query}"))
            for e in page.entries:
                yield decode_key(base64.b64decode(e.key)), deserialize(base64.b64decode(e.value))
            if page.next_after is None:
                return
            after = page.next_after

    def items(self) -> Iterator[tuple[Any, Any]]:
        return self._pages()

    def keys(self) -> Iterator[Any]:
        return (k for k, _ in self._pages())

    def values(self) -> Iterator[Any]:
        return (v for _, v in self._pages())

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def clear(self) -> None:
        self._client.transport.request("POST", f"/v1/dicts/{self.name}/clear")

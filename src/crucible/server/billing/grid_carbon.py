"""Grid carbon intensity per region, from sources the operator configures.

``CRUCIBLE_CARBON_SOURCES`` maps regions to sources, ``region=source`` pairs separated by
``;`` (nothing by default: every host's declared figure applies). A source is

- a CSV file (a path): rows of ``time,g_per_kwh``, ``time`` an ISO-8601 instant (``Z`` or an
  offset) or integer epoch milliseconds, in any order; the figure in force at a time is the
  row at or before it (a step function). A header row is allowed. The file is re-read when
  it changes.
- an HTTP(S) URL the operator runs: ``GET`` answers JSON, a number or
  ``{"carbon_g_per_kwh": N}``, within 2 s.

The scheduler takes the figure at the time of use (at most every
``CRUCIBLE_CARBON_REFRESH_S``, outside any database transaction), writes it onto the
region's hosts, and metering and placement use it. A source that fails or answers nonsense
(not a whole number of gCO2/kWh in 0..5000, or a CSV with no row yet in force) is not used:
the host's declared figure applies and the host's status says why.
"""

from __future__ import annotations

import csv
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from crucible.errors import InvalidRequestError

__all__ = ["CsvSeries", "GridIntensity", "GridReading", "HttpSource", "parse_sources"]

log = logging.getLogger("crucible.carbon")

MAX_G_PER_KWH = 5000  # no grid on Earth is above ~1,100; beyond this is nonsense
_HTTP_TIMEOUT_S = 2.0
_MAX_BODY = 64 * 1024


class SourceError(Exception):
    """A source failed or answered nonsense (the message says which)."""


def _valid(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SourceError(f"{where}: {value!r} is not a number of gCO2/kWh")
    if value != value or not 0 <= value <= MAX_G_PER_KWH:  # NaN, negative, absurd
        raise SourceError(f"{where}: {value!r} gCO2/kWh is outside 0..{MAX_G_PER_KWH}")
    return round(value)


def _time_ms(text: str) -> int:
    text = text.strip()
    if text.isascii() and text.lstrip("-").isdigit():
        return int(text)
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or an offset)")
    return round(at.timestamp() * 1000)


class CsvSeries:
    """A time series in a CSV file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._rows: list[tuple[int, int]] = []

    def describe(self) -> str:
        return f"file {self.path}"

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror}") from None
        if mtime == self._mtime:
            return
        rows: list[tuple[int, int]] = []
        with self.path.open(newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < 2:
                    raise SourceError(f"{self.path}:{n}: expected time,g_per_kwh")
                try:
                    t = _time_ms(row[0])
                except ValueError:
                    if n == 1:
                        continue  # a header
                    raise SourceError(f"{self.path}:{n}: {row[0]!r} is not a time") from None
                try:
                    value = float(row[1])
                except ValueError:
                    raise SourceError(
                        f"{self.path}:{n}: {row[1]!r} is not a number of gCO2/kWh"
                    ) from None
                rows.append((t, _valid(value, f"{self.path}:{n}")))
        rows.sort()
        self._rows, self._mtime = rows, mtime

    def at(self, now_ms: int) -> int:
        self._load()
        found = None
        for t, value in self._rows:  # files are small (a year hourly: 8,760 rows)
            if t > now_ms:
                break
            found = value
        if found is None:
            raise SourceError(f"{self.path} has no row at or before now")
        return found


class HttpSource:
    """An HTTP(S) endpoint the operator runs (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def describe(self) -> str:
        return f"URL {self.url}"

    def at(self, now_ms: int) -> int:
        del now_ms  # the endpoint answers for now
        req = urllib.request.Request(self.url, headers={"accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT_S) as resp:
                body = resp.read(_MAX_BODY + 1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SourceError(f"{self.url}: {exc}") from None
        if len(body) > _MAX_BODY:
            raise SourceError(f"{self.url}: the answer is larger than {_MAX_BODY} bytes")
        try:
            data = json.loads(body)
        except ValueError:
            raise SourceError(f"{self.url}: the answer is not JSON") from None
        if isinstance(data, dict):
            data = data.get("carbon_g_per_kwh")
        return _valid(data, self.url)


Source = CsvSeries | HttpSource


def parse_sources(spec: str) -> dict[str, Source]:
    """``region=source;...`` → sources by region. Raises :class:`InvalidRequestError` naming
    the part that is wrong."""
    out: dict[str, Source] = {}
    for part in spec.split(";"):
        if not part.strip():
            continue
        region, eq, where = part.partition("=")
        region, where = region.strip(), where.strip()
        if not eq or not region or not where:
            raise InvalidRequestError(
                f"CRUCIBLE_CARBON_SOURCES: {part.strip()!r} is not region=source "
                "(a CSV path or an http(s) URL)"
            )
        if region in out:
            raise InvalidRequestError(f"CRUCIBLE_CARBON_SOURCES: region {region!r} twice")
        if where.startswith(("http://", "https://")):
            out[region] = HttpSource(where)
        elif "://" in where:
            raise InvalidRequestError(
                f"CRUCIBLE_CARBON_SOURCES: {where!r}: a source is a CSV path or an http(s) URL"
            )
        else:
            out[region] = CsvSeries(Path(where).expanduser())
    return out


@dataclass(frozen=True)
class GridReading:
    """A region's figure now (None: not usable, the declared figure applies) and what to say
    about it in the hosts' status (None: nothing)."""

    g_per_kwh: int | None
    note: str | None


class GridIntensity:
    """The operator's sources, read at most every ``refresh_ms``."""

    def __init__(self, sources: dict[str, Source], refresh_ms: int) -> None:
        self.sources = sources
        self.refresh_ms = refresh_ms
        self._last_ms: int | None = None

    def due(self, now_ms: int) -> bool:
        return bool(self.sources) and (
            self._last_ms is None or now_ms - self._last_ms >= self.refresh_ms
        )

    def read(self, now_ms: int) -> dict[str, GridReading]:
        """Every region's figure now. Does I/O (files, HTTP): call it outside transactions."""
        self._last_ms = now_ms
        out: dict[str, GridReading] = {}
        for region, source in self.sources.items():
            try:
                out[region] = GridReading(source.at(now_ms), None)
            except Exception as exc:  # any failure falls back to the declared figure
                why = str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
                log.warning("grid carbon source for %s (%s): %s", region, source.describe(), why)
                # Every tenant sees a host's status: the operator's path or URL stays out of it.
                where = str(source.path) if isinstance(source, CsvSeries) else source.url
                why = why.replace(where, "the source")
                note = f"grid carbon source failed ({why}); using the declared figure"
                out[region] = GridReading(None, note[:300])
        return out

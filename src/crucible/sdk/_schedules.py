"""``crucible.Cron`` and ``crucible.Period``: when a deployed function runs by itself."""

from __future__ import annotations

from pydantic import ValidationError

from crucible.errors import InvalidRequestError
from crucible.protocol.schedules import MAX_PERIOD_S, MIN_PERIOD_S, ScheduleSpec

__all__ = ["Cron", "Period", "Schedule"]


class Schedule:
    spec: ScheduleSpec

    def __repr__(self) -> str:
        return self.spec.describe()


class Cron(Schedule):
    """``Cron("*/5 * * * *")``: minute, hour, day of month, month, day of week, evaluated in
    ``timezone`` (an IANA name). Exactly one call per matching minute, on deployed apps."""

    def __init__(self, expression: str, *, timezone: str = "UTC") -> None:
        if not isinstance(expression, str) or not isinstance(timezone, str):
            raise InvalidRequestError("Cron(expression, timezone=...) takes strings")
        try:
            self.spec = ScheduleSpec(kind="cron", cron=expression.strip(), timezone=timezone)
        except ValidationError as exc:
            why = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise InvalidRequestError(
                f"Cron({expression!r}, timezone={timezone!r}): {why}"
            ) from None


class Period(Schedule):
    """``Period(minutes=5)``: every interval, counted from the deploy that created the
    schedule (a redeploy with the same period keeps its phase)."""

    def __init__(
        self, *, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0
    ) -> None:
        parts = {"days": days, "hours": hours, "minutes": minutes, "seconds": seconds}
        for label, value in parts.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InvalidRequestError(f"Period({label}={value!r}): must be a number >= 0")
        total = days * 86400 + hours * 3600 + minutes * 60 + seconds
        if not MIN_PERIOD_S <= total <= MAX_PERIOD_S:
            raise InvalidRequestError(
                f"Period(...) of {total:g} s: must be between {MIN_PERIOD_S:g} s and 366 days"
            )
        self.spec = ScheduleSpec(kind="period", period_s=float(total))

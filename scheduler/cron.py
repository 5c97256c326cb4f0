"""Cron expressions: validation with a clear message, and the next fire time in the job's time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

from carnet.errors import ValidationError


def validate_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"Unknown time zone {name!r}", field="timezone") from None


def validate_cron(expression: str) -> str:
    """Standard five fields (minute hour day month weekday); an optional sixth field gives seconds."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError("cron is required, e.g. '0 6 * * *'", field="cron")
    expression = " ".join(expression.split())
    if len(expression.split(" ")) not in (5, 6):
        raise ValidationError(
            f"Invalid cron {expression!r}: expected 5 fields (minute hour day month weekday) "
            "and optionally a 6th for seconds",
            field="cron",
        )
    try:
        croniter(expression, datetime.now(UTC))
    except (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, ValueError, KeyError) as exc:
        raise ValidationError(f"Invalid cron {expression!r}: {exc}", field="cron") from None
    return expression


def next_fire_time(expression: str, timezone: str, after: datetime) -> datetime:
    """The first fire time strictly after ``after``, in UTC, the cron read in ``timezone``."""
    zone = validate_timezone(timezone)
    local_after = after.astimezone(zone)
    return croniter(expression, local_after).get_next(datetime).astimezone(UTC)

"""Cron expressions: validation with a clear message, and the next fire time in the job's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
        # Asking for the next fire catches expressions that parse but never fire ("0 0 31 2 *").
        croniter(expression, datetime.now(UTC)).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, ValueError, KeyError) as exc:
        raise ValidationError(f"Invalid cron {expression!r}: {exc}", field="cron") from None
    return expression


def next_fire_time(expression: str, timezone: str, after: datetime) -> datetime:
    """The first fire time strictly after ``after``, in UTC, the cron read in ``timezone``.

    When clocks go back, a wall-clock time happens twice: a job with fixed hours ("30 2 * * *") fires at
    the first one only, so a daily report is not mailed twice; a job firing every hour keeps every real hour.
    """
    zone = validate_timezone(timezone)
    hours_fixed = expression.split()[1] != "*"
    schedule = croniter(expression, after.astimezone(zone))
    while True:
        fire = schedule.get_next(datetime)
        # Subtract in UTC: arithmetic on zone-aware datetimes is wall-clock arithmetic.
        hour_earlier = (fire.astimezone(UTC) - timedelta(hours=1)).astimezone(zone)
        repeated = hour_earlier.replace(tzinfo=None) == fire.replace(tzinfo=None)
        if not (hours_fixed and repeated):
            return fire.astimezone(UTC)

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


# -- presets: what most jobs need, without cron's syntax ---------------------------------------------------
PRESETS = ("hourly", "nightly", "weekly", "monthly")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's numbering: 0 = Sunday
PRESET_FIELDS = {
    "hourly": {"minute"},
    "nightly": {"at"},
    "weekly": {"at", "weekday"},
    "monthly": {"at", "day"},
}


def _clock(value, field: str) -> tuple[int, int]:
    """``"HH:MM"`` (24-hour clock) -> (hour, minute)."""
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) == 2 and all(p.isdigit() and len(p) == 2 for p in parts):
        hour, minute = int(parts[0]), int(parts[1])
        if hour < 24 and minute < 60:
            return hour, minute
    raise ValidationError(
        f"{field} must be a time of day as HH:MM (24-hour clock), e.g. '06:30'", field=field
    )


def _whole(value, low: int, high: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"{field} must be a whole number from {low} to {high}", field=field)
    return value


def cron_from_preset(schedule) -> str:
    """The cron expression of a preset: ``{"preset": "hourly", "minute": 15}``, ``{"preset": "nightly",
    "at": "02:30"}``, ``{"preset": "weekly", "at": "08:00", "weekday": "mon"}``, ``{"preset": "monthly",
    "at": "06:00", "day": 1}`` (days 29-31 would skip short months: refused). Read in the job's time zone."""
    if not isinstance(schedule, dict):
        raise ValidationError("schedule must be an object such as {'preset': 'nightly', 'at': '02:30'}")
    preset = schedule.get("preset")
    if preset not in PRESETS:
        raise ValidationError(f"schedule.preset must be one of {', '.join(PRESETS)}", field="schedule.preset")
    unknown = sorted(set(schedule) - PRESET_FIELDS[preset] - {"preset"})
    if unknown:
        allowed = ", ".join(sorted(PRESET_FIELDS[preset]))
        raise ValidationError(
            f"A {preset} schedule takes {allowed}, not {', '.join(unknown)}", field=f"schedule.{unknown[0]}"
        )
    if preset == "hourly":
        return f"{_whole(schedule.get('minute', 0), 0, 59, 'schedule.minute')} * * * *"
    hour, minute = _clock(schedule.get("at", "00:00"), "schedule.at")
    if preset == "nightly":
        return f"{minute} {hour} * * *"
    if preset == "weekly":
        weekday = schedule.get("weekday", "mon")
        if not isinstance(weekday, str) or weekday.lower()[:3] not in WEEKDAYS:
            raise ValidationError(
                f"schedule.weekday must be one of {', '.join(WEEKDAYS)}", field="schedule.weekday"
            )
        return f"{minute} {hour} * * {WEEKDAYS.index(weekday.lower()[:3])}"
    day = _whole(schedule.get("day", 1), 1, 28, "schedule.day")
    return f"{minute} {hour} {day} * *"


def cron_of(body: dict) -> str | None:
    """A job's cron from a request body: ``cron`` (raw) or ``schedule`` (a preset), exactly one. ``"cron":
    null`` says the job has no schedule (run now, a webhook or another job start it)."""
    if ("cron" in body) == ("schedule" in body):
        raise ValidationError(
            "Give either cron (e.g. '0 6 * * *', or null for no schedule) or schedule (a preset), not both",
            field="cron",
        )
    if "cron" in body:
        return None if body["cron"] is None else validate_cron(body["cron"])
    return cron_from_preset(body["schedule"])

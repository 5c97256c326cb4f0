"""The alert rule shared by the job kinds that alert (``alert``: a SQL condition; ``notebook``: a notebook
that called ``carnet.alert(...)``).

An alert mails when its condition BECOMES true: it was not true at the job's previous check
(``Job.alert_active``), and the last alert mail (``Job.alert_sent_at``) is older than the job's cool-down.
While the condition stays true no further mail goes; once it turned false and true again, mail goes again
after the cool-down. Both functions only read and set the job's two columns: the caller's session commits.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from carnet.errors import ValidationError

DEFAULT_COOLDOWN_SECONDS = 3600
MAX_COOLDOWN_SECONDS = 30 * 24 * 3600


def cooldown_from(config: dict, field: str = "cooldown_seconds") -> int:
    """A kind's validated ``cooldown_seconds`` (default one hour, 0 to 30 days)."""
    value = config.get(field, DEFAULT_COOLDOWN_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COOLDOWN_SECONDS:
        raise ValidationError(
            f"{field} must be a whole number of seconds from 0 to {MAX_COOLDOWN_SECONDS} (30 days)",
            field=field,
        )
    return value


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def should_alert(job, now: datetime, condition_true: bool, cooldown_seconds: int) -> bool:
    """Whether this check sends an alert mail: the condition holds now, did not at the previous check, and
    no alert mail went within the cool-down."""
    if not condition_true or job.alert_active:
        return False
    if job.alert_sent_at is None:
        return True
    return _aware(now) - _aware(job.alert_sent_at) >= timedelta(seconds=cooldown_seconds)


def record_alert(job, now: datetime, condition_true: bool, sent: bool) -> None:
    """Remember this check's outcome on the job: whether the condition held, and when an alert mail went.

    A condition that became true inside the cool-down (no mail) is still recorded as active, so that it mails
    only after it turned false again."""
    job.alert_active = bool(condition_true)
    if sent:
        job.alert_sent_at = now

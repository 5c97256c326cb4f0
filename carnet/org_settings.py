"""An organization's settings: one declarative table of keys an admin may change (REST ``/api/v1/org`` and
the admin page's form), each with its type, default, validation and a one-line description.

``name`` lives in ``organizations.name``; the others in the ``organizations.settings`` JSON object, where a
missing key means its default (other modules read them as ``org.settings.get(key, default)``, e.g. app
sharing reads ``allow_public_apps``). A change is validated whole before anything is applied.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from carnet.branding import check_color, check_custom_css
from carnet.db.models import Organization
from carnet.errors import NotFound, ValidationError
from carnet.validation import refuse_hidden_characters

MAX_NAME = 200
# An origin that may frame embed URLs (CSP frame-ancestors source): scheme, host (optionally *.), port.
_ORIGIN = re.compile(r"^https?://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d{1,5})?$")
MAX_EMBED_ORIGINS = 20
# Keys of an organization that are never settings: asking to change them is a 400, not silently ignored.
NOT_SETTINGS = frozenset({"id", "slug", "org_id", "created_at", "settings"})


@dataclass(frozen=True)
class Setting:
    key: str
    kind: str  # "text", "timezone", "bool", "int", "color" or "css": how the admin page shows and reads it
    default: Any
    description: str
    check: Callable[[str, Any], Any] | None = None  # (key, value) -> value to store; else ValidationError
    low: int = 0  # bounds of "int" settings
    high: int = 0

    def validate(self, value):
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
                raise ValidationError(
                    f"{self.key} must be an integer from {self.low} to {self.high}", field=self.key
                )
            return value
        return self.check(self.key, value)


def _text(key: str, value) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{key} must be text", field=key)
    text = " ".join(unicodedata.normalize("NFKC", value).split())
    if not 1 <= len(text) <= MAX_NAME:
        raise ValidationError(f"{key} must be 1-{MAX_NAME} characters", field=key)
    return refuse_hidden_characters(text, key)


def _timezone(key: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{key} must be an IANA time zone such as 'Europe/Paris'", field=key)
    try:
        ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{key}: unknown time zone {value!r}", field=key) from None
    return value.strip()


def _origins(key: str, value) -> str:
    """Space-separated origins (``https://portal.example``); empty: any site."""
    if not isinstance(value, str):
        raise ValidationError(f"{key} must be text", field=key)
    origins = list(dict.fromkeys(value.split()))
    bad = [o for o in origins if not _ORIGIN.fullmatch(o)]
    if bad:
        raise ValidationError(
            f"{key}: not an origin like https://portal.example: {bad[0][:100]!r}", field=key
        )
    if len(origins) > MAX_EMBED_ORIGINS:
        raise ValidationError(f"{key}: at most {MAX_EMBED_ORIGINS} origins", field=key)
    return " ".join(origins)


def _bool(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{key} must be true or false", field=key)
    return value


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        Setting("name", "text", None, "The organization's display name (1-200 characters).", _text),
        Setting("timezone", "timezone", "UTC", "IANA time zone: the default of new report jobs.", _timezone),
        Setting(
            "allow_public_apps",
            "bool",
            False,
            "Whether studio users and admins may make an app public (open to anyone with its link).",
            _bool,
        ),
        Setting(
            "embed_origins",
            "text",
            "",
            "Sites whose pages may frame this organization's embed URLs, as origins separated by spaces "
            "(https://portal.example); empty: any site.",
            _origins,
        ),
        Setting(
            "api_key_max_days",
            "int",
            0,
            "Longest lifetime of a new API key, in days (0: no limit; otherwise every key must expire).",
            low=0,
            high=3650,
        ),
        Setting(
            "invitation_days",
            "int",
            7,
            "Days an invitation link stays valid (until set: the platform's CARNET_INVITATION_DAYS).",
            low=1,
            high=90,
        ),
        Setting(
            "job_output_retention_days",
            "int",
            90,
            "Days the files of a finished job run (PDF, attachments, executed notebook) are kept; the run's "
            "history stays.",
            low=1,
            high=3650,
        ),
        Setting(
            "primary_color",
            "color",
            "",
            "Brand colour of the Viewer's pages and the gallery, #RRGGBB (empty: Carnet's own).",
            check_color,
        ),
        Setting(
            "custom_css",
            "css",
            "",
            "CSS added to the Viewer's pages and the gallery (max 20 KB; no @import, no URLs but data: "
            "images, no '<', no backslash escapes, no expression() or javascript:).",
            check_custom_css,
        ),
    )
}


def get_org(session, org_id: int) -> Organization:
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound("No such organization")
    return org


def setting(org: Organization, key: str):
    """The current value of ``key`` (its default when never set)."""
    if key == "name":
        return org.name
    return (org.settings or {}).get(key, SETTINGS[key].default)


def org_setting(session, org_id: int, key: str):
    return setting(get_org(session, org_id), key)


def current_settings(org: Organization) -> dict:
    return {key: setting(org, key) for key in SETTINGS if key != "name"}


def org_json(org: Organization) -> dict:
    return {"id": org.id, "slug": org.slug, "name": org.name, "settings": current_settings(org)}


def check_changes(changes: dict) -> dict:
    """The validated values of ``changes``; the first bad key is a 400 naming it, so nothing is applied."""
    if not isinstance(changes, dict):
        raise ValidationError("The request body must be an object of settings")
    refused = sorted(set(changes) & NOT_SETTINGS)
    if refused:
        raise ValidationError(f"These fields cannot be changed: {', '.join(refused)}", field=refused[0])
    unknown = sorted(set(changes) - set(SETTINGS))
    if unknown:
        raise ValidationError(
            f"Unknown settings: {', '.join(unknown)} (known: {', '.join(SETTINGS)})", field=unknown[0]
        )
    return {key: SETTINGS[key].validate(value) for key, value in changes.items()}


def update_settings(session, org: Organization, changes: dict) -> dict:
    """Apply ``changes`` (all valid, or none applied); returns ``{key: {"from": old, "to": new}}`` of what
    actually changed (for the audit record)."""
    values = check_changes(changes)
    changed = {
        key: {"from": setting(org, key), "to": value}
        for key, value in values.items()
        if setting(org, key) != value
    }
    if "name" in changed:
        org.name = values["name"]
    stored = {k: v["to"] for k, v in changed.items() if k != "name"}
    if stored:
        org.settings = {**(org.settings or {}), **stored}  # a new dict: JSON columns track reassignment
    session.flush()
    return changed


def from_form(fields: dict[str, str]) -> dict:
    """The admin page's form fields (all text; an unchecked box is absent) as typed values."""
    values = {}
    for key, spec in SETTINGS.items():
        if spec.kind == "bool":
            values[key] = fields.get(key) in ("on", "true", "1")
        elif key in fields and spec.kind == "int":
            try:
                values[key] = int(fields[key].strip())
            except ValueError:
                raise ValidationError(
                    f"{key} must be an integer from {spec.low} to {spec.high}", field=key
                ) from None
        elif key in fields:
            values[key] = fields[key]
    return values

"""Small validators shared by the API and the CLI."""

import re

from carnet.errors import ValidationError

_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


def validate_email(value, field: str = "email") -> str:
    if not isinstance(value, str) or not _EMAIL.match(value.strip()) or len(value) > 320:
        raise ValidationError(f"Invalid email address {value!r}", field=field)
    return value.strip().lower()


def validate_emails(values, field: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise ValidationError(f"{field} must be a non-empty list of email addresses", field=field)
    return [validate_email(v, field=field) for v in values]

"""Small validators shared by the API and the CLI."""

import re
import unicodedata

from carnet.errors import NotFound, ValidationError

MAX_ID = 2**63 - 1

_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


def validate_email(value, field: str = "email") -> str:
    if not isinstance(value, str) or not _EMAIL.fullmatch(value.strip()) or len(value) > 320:
        raise ValidationError(f"Invalid email address {value!r}", field=field)
    return value.strip().lower()


def validate_emails(values, field: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise ValidationError(f"{field} must be a non-empty list of email addresses", field=field)
    return [validate_email(v, field=field) for v in values]


def parse_id(value, not_found_message: str) -> int:
    """A database id from a path or a body; anything that cannot be one is simply not found (404)."""
    if isinstance(value, bool):
        raise NotFound(not_found_message)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise NotFound(not_found_message) from None
    if not 0 < number <= MAX_ID:
        raise NotFound(not_found_message)
    return number


# Control characters, and format characters (bidi overrides such as U+202E, zero-width ones), private-use,
# surrogates and unassigned code points: they make a name display differently from what it holds.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn"})


def refuse_hidden_characters(text: str, field: str) -> str:
    """``text`` unchanged, or a 400 naming ``field`` if it holds control or invisible characters."""
    if any(unicodedata.category(ch) in _HIDDEN_CATEGORIES for ch in text):
        raise ValidationError(f"{field} must not hold control or invisible characters", field=field)
    return text

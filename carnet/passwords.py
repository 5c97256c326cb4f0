"""Password hashing (bcrypt). Plain passwords are never stored or logged."""

import os
import secrets

import bcrypt

# bcrypt ignores input past 72 bytes; longer passwords are refused rather than silently truncated.
MAX_PASSWORD_BYTES = 72
# bcrypt's cost: 2**rounds key-setup iterations (~0.25 s per hash or check at 12 on one core).
DEFAULT_ROUNDS = 12
ROUNDS_VARIABLE = "CARNET_PASSWORD_HASH_ROUNDS"


def hash_rounds() -> int:
    """The bcrypt cost new hashes are made with: 12 unless CARNET_PASSWORD_HASH_ROUNDS (4-31) says otherwise.
    The test suite lowers it to 4 (it signs people in and creates them thousands of times); a production
    installation keeps 12 or raises it. Hashes carry their own cost, so changing it never locks anyone out."""
    raw = os.environ.get(ROUNDS_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_ROUNDS
    if not raw.isdigit() or not 4 <= int(raw) <= 31:
        raise ValueError(f"{ROUNDS_VARIABLE} must be a whole number from 4 to 31, not {raw!r}")
    return int(raw)


def dummy_hash() -> str:
    """A hash no password matches, at the current cost: checked for unknown people, so that a sign-in takes
    the same time whether the email exists or not."""
    return f"$2b${hash_rounds():02d}$" + "." * 53


def hash_password(password: str) -> str:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        from carnet.errors import ValidationError

        raise ValidationError(f"Passwords are limited to {MAX_PASSWORD_BYTES} bytes")
    return bcrypt.hashpw(raw, bcrypt.gensalt(hash_rounds())).decode()


def verify_password(password: str, hashed: str | None) -> bool:
    raw = password.encode()
    if not hashed or len(raw) > MAX_PASSWORD_BYTES:
        return False
    return bcrypt.checkpw(raw, hashed.encode())


def generate_password() -> str:
    """A random password to hand out once (there is no default password anywhere)."""
    return secrets.token_urlsafe(15)

"""Password hashing (bcrypt). Plain passwords are never stored or logged."""

import secrets

import bcrypt

# bcrypt ignores input past 72 bytes; longer passwords are refused rather than silently truncated.
MAX_PASSWORD_BYTES = 72


def hash_password(password: str) -> str:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        from carnet.errors import ValidationError

        raise ValidationError(f"Passwords are limited to {MAX_PASSWORD_BYTES} bytes")
    return bcrypt.hashpw(raw, bcrypt.gensalt()).decode()


def verify_password(password: str, hashed: str | None) -> bool:
    raw = password.encode()
    if not hashed or len(raw) > MAX_PASSWORD_BYTES:
        return False
    return bcrypt.checkpw(raw, hashed.encode())


def generate_password() -> str:
    """A random password to hand out once (there is no default password anywhere)."""
    return secrets.token_urlsafe(15)

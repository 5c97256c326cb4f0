"""Secret files in <data_dir>/secrets, created once with 0600 permissions."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

HUB_SECRETS = {"hub_cookie_secret": 32, "proxy_auth_token": 32}


def ensure_secret(data_dir: str | Path, name: str, nbytes: int = 32) -> bool:
    """Create the secret if it does not exist. Returns True when it was created."""
    directory = Path(data_dir) / "secrets"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    path = directory / name
    if path.exists() and path.read_text().strip():
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(nbytes))
    return True


def ensure_hub_secrets(data_dir: str | Path) -> None:
    for name, nbytes in HUB_SECRETS.items():
        ensure_secret(data_dir, name, nbytes)

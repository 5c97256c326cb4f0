"""The `carnet` command line: the demo set-up is idempotent, passwords are random and shown once, and the
Hub refuses to start without its secrets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import User
from carnet.hub_config import CONFIG_FILE
from carnet.passwords import verify_password
from carnet.settings import CarnetSettings

BIN = Path(sys.executable).parent


def run(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "carnet"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or os.environ.copy(),
    )


def test_demo_setup_is_idempotent_and_prints_passwords_once(tmp_path):
    data = tmp_path / "data"
    first = run("--data-dir", str(data), "init", "--demo")
    assert first.returncode == 0, first.stderr
    passwords = dict(re.findall(r"^\s+(\S+@\S+)\s+(\S+)$", first.stdout, flags=re.M))
    assert set(passwords) == {
        "admin@acme.example",
        "studio@acme.example",
        "analyst@acme.example",
        "viewer@acme.example",
        "viewer@globex.example",
    }
    assert len(set(passwords.values())) == 5  # random, not one shared default

    second = run("--data-dir", str(data), "init", "--demo")
    assert second.returncode == 0, second.stderr
    assert "already present" in second.stdout
    for password in passwords.values():
        assert password not in second.stdout

    settings = CarnetSettings(data_dir=str(data), db_url=f"sqlite:///{data / 'carnet.sqlite'}")
    with session_scope(settings.db_url) as session:
        users = session.scalars(select(User)).all()
        assert len(users) == 5
        for user in users:
            assert user.password_hash.startswith("$2")
            assert passwords[user.email] not in user.password_hash
            assert verify_password(passwords[user.email], user.password_hash)
    for name in ("hub_cookie_secret", "proxy_auth_token"):
        secret = data / "secrets" / name
        assert len(secret.read_text().strip()) == 64
        assert oct(secret.stat().st_mode & 0o777) == "0o600"


def hub_start(data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CARNET_DATA_DIR": str(data), "CARNET_HUB_PORT": "1"}
    return subprocess.run(
        [str(BIN / "jupyterhub"), "-f", str(CONFIG_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(data),
    )


def test_hub_refuses_to_start_without_secrets(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    result = hub_start(data)
    assert result.returncode != 0
    assert "missing secret" in result.stdout + result.stderr

    (data / "secrets").mkdir()
    (data / "secrets" / "hub_cookie_secret").write_text("   \n")
    (data / "secrets" / "proxy_auth_token").write_text("abc")
    result = hub_start(data)
    assert result.returncode != 0
    assert "hub_cookie_secret" in result.stdout + result.stderr


def test_run_job_of_unknown_job_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    assert run("--data-dir", str(data), "init").returncode == 0
    result = run("--data-dir", str(data), "run-job", "acme", "nope")
    assert result.returncode == 2
    assert "No job 'nope' in organization 'acme'" in result.stderr

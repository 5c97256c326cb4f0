"""Operating-system accounts: each person's code runs as an unprivileged account of their own.

When Carnet runs as root (a server, the demo, CI), every Studio server, Viewer kernel and job kernel runs
as ``carnet-u<user id>`` (the start is CarnetSettings.os_account_prefix), an account with no login and a
private home under ``<data_dir>/homes``. Code in a notebook then cannot read Carnet's database, secrets,
organizations' warehouses or other people's processes: it reaches data only through the API, with its own
token. Run as an ordinary user (a laptop), Carnet cannot switch accounts: everything runs as that user and
the Hub says so at start.
``CARNET_ISOLATION=off`` turns accounts off explicitly (development only).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from carnet.settings import CarnetSettings

log = logging.getLogger("carnet.isolation")

# The variable by which a kernel start names the account it must run as (removed before the kernel runs).
KERNEL_ACCOUNT_ENV = "CARNET_KERNEL_ACCOUNT"


def accounts_enabled() -> bool:
    if os.environ.get("CARNET_ISOLATION", "auto").lower() in ("off", "0", "false", "no"):
        return False
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("useradd") is not None


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def lookup(cls, name: str) -> Account:
        entry = pwd.getpwnam(name)
        return cls(name=name, uid=entry.pw_uid, gid=entry.pw_gid, home=Path(entry.pw_dir))

    @property
    def runtime_dir(self) -> Path:
        return self.home / ".local" / "share" / "jupyter" / "runtime"

    def environment(self) -> dict:
        """Variables that keep everything the account's processes write inside its home."""
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": "/bin/sh",
            "IPYTHONDIR": str(self.home / ".ipython"),
            "JUPYTER_CONFIG_DIR": str(self.home / ".jupyter"),
            "JUPYTER_DATA_DIR": str(self.home / ".local" / "share" / "jupyter"),
            "JUPYTER_RUNTIME_DIR": str(self.runtime_dir),
            "MPLCONFIGDIR": str(self.home / ".config" / "matplotlib"),
            "TMPDIR": str(self.home / "tmp"),
        }

    def preexec(self):
        """For Popen(preexec_fn=...): become the account, with no supplementary groups."""
        uid, gid, home = self.uid, self.gid, str(self.home)

        def become():
            os.setgid(gid)
            os.setgroups([])
            os.setuid(uid)
            os.chdir(home)

        return become

    def own(self, path: Path, mode: int = 0o700) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        os.chmod(path, mode)
        return path


def ensure_account(settings: CarnetSettings, user_id: int) -> Account:
    """The account of Carnet user ``user_id`` (``<settings.os_account_prefix><user_id>``), created on first
    use, with its private home."""
    name = f"{settings.os_account_prefix}{int(user_id)}"
    home = homes_dir(settings) / f"u{int(user_id)}"
    try:
        pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                str(home),
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            try:  # another Carnet process may have created it at the same moment
                pwd.getpwnam(name)
            except KeyError:
                raise RuntimeError(f"Cannot create the OS account {name}: {result.stderr.strip()}") from None
    entry = pwd.getpwnam(name)
    account = Account(name=name, uid=entry.pw_uid, gid=entry.pw_gid, home=home)
    if entry.pw_dir != str(home):  # the same account served another data directory before
        moved = subprocess.run(
            ["usermod", "--home", str(home), name], capture_output=True, text=True, check=False
        )
        if moved.returncode != 0:  # e.g. the account still runs processes of that other installation
            log.warning("Cannot move the home of %s to %s: %s", name, home, moved.stderr.strip())
    account.own(home)
    for sub in (".ipython", ".jupyter", ".local/share/jupyter/runtime", ".config", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "-R", f"{account.uid}:{account.gid}", str(home)], check=True)
    return account


def homes_dir(settings: CarnetSettings) -> Path:
    return Path(settings.data_dir) / "homes"


def lock_down_data_dir(settings: CarnetSettings) -> None:
    """Only Carnet's own processes read the data directory; accounts may only traverse it to their homes
    and to their job runs' output folders."""
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o711)  # noqa: S103 - traversable to the homes, not listable
    for path in (homes_dir(settings), settings.runs_dir):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o711)  # noqa: S103 - traversable, not listable
    for entry in data.iterdir():
        if entry in (homes_dir(settings), settings.runs_dir):
            continue
        _private(entry)


def _private(path: Path) -> None:
    if path.is_symlink():
        return
    if path.is_dir():
        os.chmod(path, 0o700)
        for child in path.iterdir():
            _private(child)
    else:
        # Read-only files (published snapshots) stay read-only, for their owner only.
        os.chmod(path, 0o600 if path.stat().st_mode & 0o200 else 0o400)


def account_for(settings: CarnetSettings, user_id: int) -> Account | None:
    """The account to run ``user_id``'s code as, or None when accounts are off."""
    return ensure_account(settings, user_id) if accounts_enabled() else None

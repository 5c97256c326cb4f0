"""A kernel provisioner that starts each Viewer kernel as the OS account of the person it serves.

The Viewer (root) writes the kernel's connection file where only it can read; the kernel, once it has
become the person's account, must read it: a copy goes into the account's own runtime folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from jupyter_client.provisioning import LocalProvisioner

from carnet.isolation import KERNEL_ACCOUNT_ENV, Account


class AccountProvisioner(LocalProvisioner):
    _account_connection_file: Path | None = None

    async def launch_kernel(self, cmd, **kwargs):
        env = dict(kwargs.get("env") or {})
        name = env.pop(KERNEL_ACCOUNT_ENV, None)
        kwargs["env"] = env
        if name:
            account = Account.lookup(name)
            source = Path(self.parent.connection_file)
            copy = account.runtime_dir / source.name
            shutil.copyfile(source, copy)
            os.chown(copy, account.uid, account.gid)
            os.chmod(copy, 0o600)
            self._account_connection_file = copy
            cmd = [str(copy) if part == str(source) else part for part in cmd]
            kwargs.update(user=account.uid, group=account.gid, extra_groups=[], cwd=str(account.home))
        return await super().launch_kernel(cmd, **kwargs)

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        if self._account_connection_file and not restart:
            with contextlib.suppress(FileNotFoundError):
                self._account_connection_file.unlink()

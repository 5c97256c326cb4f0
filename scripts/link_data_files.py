"""Editable installs do not install ``[tool.setuptools.data-files]``: link them into the environment.

Run with the environment's Python after ``pip install -e .`` (the set-up scripts do). Each file listed in
pyproject.toml's data-files is symlinked at <sys.prefix>/<target>/<name>, so the Voila template and the
server-extension switch are found exactly where a wheel install puts them.
"""

import glob
import os
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    for target, patterns in data_files.items():
        destination = Path(sys.prefix) / target
        destination.mkdir(parents=True, exist_ok=True)
        for pattern in patterns:
            for source in sorted(glob.glob(str(ROOT / pattern))):
                link = destination / Path(source).name
                if link.is_symlink() or link.exists():
                    if link.is_symlink() and os.readlink(link) == source:
                        continue
                    link.unlink()
                link.symlink_to(source)
    return 0


if __name__ == "__main__":
    sys.exit(main())

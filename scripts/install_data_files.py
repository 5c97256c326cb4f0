"""Editable installs do not install ``[tool.setuptools.data-files]``: copy them into the environment.

Run with the environment's Python after ``pip install -e .`` (scripts/setup does, at every run, so edits
of the Voila template reach the environment). Each file listed in pyproject.toml's data-files is copied to
<sys.prefix>/<target>/<name>, exactly where a wheel install puts it. Copies, not symlinks: servers refuse
to serve static files through symlinks that lead out of their folder.
"""

import filecmp
import glob
import shutil
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
                installed = destination / Path(source).name
                if installed.is_symlink():
                    installed.unlink()  # left by an earlier version of this script
                elif installed.exists() and filecmp.cmp(source, installed, shallow=False):
                    continue
                shutil.copyfile(source, installed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

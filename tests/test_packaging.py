"""The wheel ships every subpackage, the migrations, the Voila template and the server-extension switch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (path,) = out.glob("carnet-*.whl")
    return zipfile.ZipFile(path)


def source_modules() -> set[str]:
    """Every .py file of every folder mapped into the ``carnet`` import name, as its path in the wheel."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    expected = set()
    for package, folder in mapping.items():
        base = ROOT / folder
        prefix = package.replace(".", "/")
        for path in base.rglob("*.py"):
            relative = path.relative_to(base)
            if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                continue
            # Sub-packages of another mapped folder are counted by that mapping.
            top = relative.parts[0]
            if package == "carnet" and f"carnet.{top}" in mapping:
                continue
            expected.add(f"{prefix}/{relative.as_posix()}")
    return expected


def test_wheel_contains_every_module(wheel):
    names = set(wheel.namelist())
    missing = sorted(source_modules() - names)
    assert not missing, f"modules missing from the wheel (add their package to pyproject.toml): {missing}"


def test_wheel_contains_each_part(wheel):
    names = set(wheel.namelist())
    for module in (
        "carnet/extension/__init__.py",
        "carnet/extension/viewer.py",
        "carnet/extension/viewer_config.py",
        "carnet/extension/viewer_kernels.py",
        "carnet/extension/viewer_logs.py",
        "carnet/kernel_helpers/process_log.py",
        "carnet/kernel_helpers/__init__.py",
        "carnet/hub_config/jupyterhub_config.py",
        "carnet/scheduler/app.py",
        "carnet/service/api/base.py",
        "carnet/migrations/env.py",
        "carnet/migrations/script.py.mako",
        "carnet/service/templates/gallery.html",
    ):
        assert module in names
    assert any(n.startswith("carnet/migrations/versions/0001_") for n in names)


def test_wheel_installs_the_voila_template_and_extension_switch(wheel):
    data = {n.split(".data/data/", 1)[1] for n in wheel.namelist() if ".data/data/" in n}
    template = "share/jupyter/voila/templates/carnet/"
    assert {
        template + "conf.json",
        template + "index.html.j2",
        template + "static/carnet.css",
        template + "static/carnet.js",
        template + "static/carnet-boot.js",
    } <= data
    assert "etc/jupyter/jupyter_server_config.d/carnet.json" in data
    conf = wheel.read(next(n for n in wheel.namelist() if n.endswith(template + "conf.json")))
    assert b'"base_template": "lab"' in conf


def test_wheel_declares_the_cli_and_source_kind_entry_points(wheel):
    entry_points = wheel.read(next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "carnet = carnet.cli:main" in entry_points
    assert "warehouse_table = carnet.sources:WarehouseTableKind" in entry_points
    assert "rest_json = carnet.kinds.rest:RestJsonKind" in entry_points
    assert "ga4 = carnet.kinds.ga4:GA4Kind" in entry_points

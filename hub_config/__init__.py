"""JupyterHub configuration for Carnet: the config file and the code it loads (authenticator, spawner,
roles, services)."""

from pathlib import Path

CONFIG_FILE = Path(__file__).resolve().parent / "jupyterhub_config.py"

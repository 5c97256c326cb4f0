"""JupyterHub configuration for Carnet (``jupyterhub -f <this file>``; ``carnet demo`` passes it).

Everything deployment-specific comes from CARNET_* environment variables (see carnet.settings) and from
the secret files that ``carnet init`` creates in <data_dir>/secrets. The Hub refuses to start without them.
"""

import os
import sys
from pathlib import Path

from carnet.hub_config.authenticator import AUTHORS_GROUP
from carnet.hub_config.oidc import oidc_configured
from carnet.hub_config.routing import default_url, proxy_command
from carnet.isolation import accounts_enabled, lock_down_data_dir
from carnet.settings import CarnetSettings, environment_for

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

# Everything the Hub and the services it starts create is private to Carnet unless made otherwise.
os.umask(0o077)

hub_port = int(os.environ.get("CARNET_HUB_PORT", "8000"))
hub_api_port = int(os.environ.get("CARNET_HUB_API_PORT", "8081"))
proxy_api_port = int(os.environ.get("CARNET_PROXY_API_PORT", "8001"))
service_port = int(os.environ.get("CARNET_SERVICE_PORT", "8181"))
viewer_port = int(os.environ.get("CARNET_VIEWER_PORT", "8182"))
ip = os.environ.get("CARNET_IP", "127.0.0.1")
# Every CarnetSettings made in this process (spawner, authenticator) sees the same service URL.
os.environ.setdefault("CARNET_API_URL", f"http://127.0.0.1:{service_port}/services/carnet/")
os.environ.setdefault("CARNET_PUBLIC_URL", f"http://{ip}:{hub_port}/")

settings = CarnetSettings()
data_dir = Path(settings.data_dir)
secrets_dir = data_dir / "secrets"
venv_bin = str(Path(sys.executable).parent)


def _secret(name: str) -> str:
    path = secrets_dir / name
    value = path.read_text().strip() if path.exists() else ""
    if not value:
        raise SystemExit(
            f"Carnet: missing secret {path}. Run `carnet init` first; the Hub never starts without it."
        )
    return value


if accounts_enabled():
    lock_down_data_dir(settings)
else:
    print(
        "Carnet: WARNING: not running as root (or CARNET_ISOLATION=off): notebook code runs as this OS user "
        "and can read the data directory. Fine for development, never for several organizations.",
        file=sys.stderr,
    )

# -- front door -----------------------------------------------------------------------------------
c.JupyterHub.ip = ip
c.JupyterHub.port = hub_port
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = hub_api_port
c.JupyterHub.base_url = "/"
c.JupyterHub.db_url = os.environ.get("CARNET_HUB_DB_URL") or f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret = bytes.fromhex(_secret("hub_cookie_secret"))
c.JupyterHub.pid_file = str(data_dir / "jupyterhub.pid")
c.ConfigurableHTTPProxy.auth_token = _secret("proxy_auth_token")
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = str(data_dir / "jupyterhub-proxy.pid")
c.ConfigurableHTTPProxy.command = [proxy_command()]
c.ConfigurableHTTPProxy.should_start = True
if os.environ.get("CARNET_SSL_CERT"):
    # All traffic can run over TLS: give a certificate and key and the Hub serves HTTPS.
    c.JupyterHub.ssl_cert = os.environ["CARNET_SSL_CERT"]
    c.JupyterHub.ssl_key = os.environ["CARNET_SSL_KEY"]

if oidc_configured():
    # Single sign-on through an OpenID Connect provider (hub_config/oidc.py); otherwise Carnet's passwords.
    c.JupyterHub.authenticator_class = "carnet.hub_config.oidc.CarnetOIDCAuthenticator"
    c.CarnetOIDCAuthenticator.oauth_callback_url = os.environ.get("CARNET_OIDC_CALLBACK_URL") or (
        os.environ["CARNET_PUBLIC_URL"].rstrip("/") + "/hub/oauth_callback"
    )
else:
    c.JupyterHub.authenticator_class = "carnet.hub_config.authenticator.CarnetAuthenticator"
c.JupyterHub.spawner_class = "carnet.hub_config.spawner.CarnetSpawner"
c.JupyterHub.allow_named_servers = False
c.JupyterHub.default_url = default_url
# Carnet's own Hub pages (first sign-in: change password, invitation links) extend JupyterHub's page.html.
c.JupyterHub.template_paths = [str(Path(__file__).resolve().parent / "templates")]

# -- Studio servers ---------------------------------------------------------------------------------
c.Spawner.default_url = "/lab"
# jupyterhub-singleuser through carnet.hub_config.launch: without jsonschema's slow IRI parser at each start.
SINGLEUSER = [sys.executable, "-m", "carnet.hub_config.launch", "singleuser"]
c.Spawner.cmd = SINGLEUSER
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.Spawner.environment = {"PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
c.SimpleLocalProcessSpawner.home_dir_template = str(data_dir / "homes" / "{username}")
for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "TMPDIR"):
    if name in os.environ:
        c.Spawner.env_keep.append(name)

# -- roles: nobody gets a server unless they are an author ------------------------------------------
c.JupyterHub.load_roles = [
    {
        # Redefines the built-in role every user has: no 'servers' scope, so viewers cannot spawn.
        "name": "user",
        "scopes": ["read:users!user", "read:groups!user", "tokens!user", "access:services"],
    },
    {"name": "carnet-author", "scopes": ["self"], "groups": [AUTHORS_GROUP]},
    {
        # The Carnet service ends the Hub sessions and servers of people disabled, deleted or demoted.
        "name": "carnet-service-admin",
        "scopes": ["admin:users", "admin:servers", "groups", "read:users"],
        "services": ["carnet"],
    },
    {
        "name": "carnet-services",
        "scopes": ["access:services!service=carnet", "read:users"],
        "services": ["carnet-viewer", "carnet-scheduler"],
    },
]

# -- Carnet's own processes, managed by the Hub -----------------------------------------------------
service_env = {
    # The identity provider's client secret is the Hub's alone.
    **{
        name: value
        for name, value in os.environ.items()
        if name.startswith("CARNET_") and name != "CARNET_OIDC_CLIENT_SECRET"
    },
    **environment_for(settings),
    "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    "PYTHONUNBUFFERED": "1",
}
for name in (
    "JUPYTER_CONFIG_DIR",
    "JUPYTER_DATA_DIR",
    "JUPYTER_RUNTIME_DIR",
    "IPYTHONDIR",
    "TMPDIR",
    "HOME",
    "PLAYWRIGHT_BROWSERS_PATH",
):
    if name in os.environ:
        service_env[name] = os.environ[name]

viewer_config = Path(__file__).resolve().parent.parent / "extension" / "viewer_config.py"
c.JupyterHub.services = [
    {
        "name": "carnet",
        "url": f"http://127.0.0.1:{service_port}",
        "command": [sys.executable, "-m", "carnet.service"],
        "environment": service_env,
        "oauth_no_confirm": True,
        "display": False,
    },
    {
        "name": "carnet-viewer",
        "url": f"http://127.0.0.1:{viewer_port}",
        "command": [*SINGLEUSER, f"--config={viewer_config}"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        "cwd": str(data_dir / "viewer-cwd"),
        "environment": service_env,
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": [],
        "display": False,
    },
    {
        "name": "carnet-scheduler",
        "command": [sys.executable, "-m", "carnet.scheduler"],
        "environment": service_env,
        "display": False,
    },
]
(data_dir / "viewer-cwd").mkdir(parents=True, exist_ok=True)

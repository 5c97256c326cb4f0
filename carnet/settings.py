"""Settings shared by every Carnet process (Hub hooks, the Carnet service, the Viewer, the scheduler).

One ``Configurable`` read by all parts, as Voila does with ``VoilaConfiguration``. Values come from, in order:
traitlets config (``c.CarnetSettings.x = ...`` in any Jupyter/Hub config file), environment variables
(``CARNET_*``, how the Hub hands settings to the services it starts), then the defaults below.
"""

import os
from pathlib import Path

from traitlets import Integer, Unicode, default, validate
from traitlets.config import Configurable


class CarnetSettings(Configurable):
    data_dir = Unicode(
        help="""Directory holding all of Carnet's state on the embedded defaults: the SQLite database,
        one folder per organization (its DuckDB warehouse, uploaded files), published app snapshots,
        job outputs and the mail outbox. Environment: CARNET_DATA_DIR. Default: ./.carnet""",
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self):
        return os.environ.get("CARNET_DATA_DIR") or str(Path.cwd() / ".carnet")

    @validate("data_dir")
    def _absolute_data_dir(self, proposal):
        return str(Path(proposal["value"]).expanduser().resolve())

    db_url = Unicode(
        help="""SQLAlchemy URL of Carnet's platform database (organizations, users, sources, apps, jobs).
        Default: a SQLite file in data_dir. PostgreSQL works too:
        postgresql+psycopg://user@host/db (pip install carnet[postgres]). Environment: CARNET_DB_URL.""",
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self):
        return os.environ.get("CARNET_DB_URL") or f"sqlite:///{Path(self.data_dir) / 'carnet.sqlite'}"

    api_url = Unicode(
        help="""Base URL of the Carnet service as seen from the machine's own processes (kernels, the
        Viewer, the scheduler), ending with the service prefix, e.g.
        http://127.0.0.1:8181/services/carnet/. Environment: CARNET_API_URL.""",
    ).tag(config=True)

    @default("api_url")
    def _default_api_url(self):
        return os.environ.get("CARNET_API_URL", "http://127.0.0.1:8181/services/carnet/")

    public_url = Unicode(
        help="""Public base URL of the Hub as people open it in a browser (links in mails, the Viewer).
        Environment: CARNET_PUBLIC_URL.""",
    ).tag(config=True)

    @default("public_url")
    def _default_public_url(self):
        return os.environ.get("CARNET_PUBLIC_URL", "http://127.0.0.1:8000/")

    smtp_host = Unicode(
        help="""SMTP server for outgoing mail (reports). Empty: mail is written as .eml files into
        outbox_dir instead of being sent. Environment: CARNET_SMTP_HOST.""",
    ).tag(config=True)

    @default("smtp_host")
    def _default_smtp_host(self):
        return os.environ.get("CARNET_SMTP_HOST", "")

    smtp_port = Integer(
        help="SMTP port. Environment: CARNET_SMTP_PORT.",
    ).tag(config=True)

    @default("smtp_port")
    def _default_smtp_port(self):
        return int(os.environ.get("CARNET_SMTP_PORT", "25"))

    mail_from = Unicode(
        help="Sender address of Carnet's mail. Environment: CARNET_MAIL_FROM.",
    ).tag(config=True)

    @default("mail_from")
    def _default_mail_from(self):
        return os.environ.get("CARNET_MAIL_FROM", "carnet@localhost")

    outbox_dir = Unicode(
        help="Where mail goes as .eml files when no SMTP host is set. Default: <data_dir>/outbox.",
    ).tag(config=True)

    @default("outbox_dir")
    def _default_outbox_dir(self):
        return os.environ.get("CARNET_OUTBOX_DIR") or str(Path(self.data_dir) / "outbox")

    chromium_path = Unicode(
        help="""Chromium executable used to print PDFs (the real binary, not a wrapper script).
        Environment: CARNET_CHROMIUM.""",
    ).tag(config=True)

    @default("chromium_path")
    def _default_chromium_path(self):
        env = os.environ.get("CARNET_CHROMIUM")
        if env:
            return env
        for candidate in ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser"):
            if Path(candidate).exists():
                return candidate
        return ""

    kernel_token_ttl = Integer(
        12 * 3600,
        help="Seconds a token handed to a Studio or Viewer kernel stays valid.",
    ).tag(config=True)

    # -- derived paths: one place decides where each kind of data lives ------------------------------
    def org_dir(self, org_id: int) -> Path:
        return Path(self.data_dir) / "orgs" / str(org_id)

    def warehouse_path(self, org_id: int) -> Path:
        return self.org_dir(org_id) / "warehouse.duckdb"

    @property
    def published_dir(self) -> Path:
        """Snapshots of published notebooks; the Viewer's root directory (read-only for authors)."""
        return Path(self.data_dir) / "published"

    @property
    def runs_dir(self) -> Path:
        return Path(self.data_dir) / "runs"


def environment_for(settings: CarnetSettings) -> dict:
    """The CARNET_* variables that hand ``settings`` to a child process."""
    return {
        "CARNET_DATA_DIR": settings.data_dir,
        "CARNET_DB_URL": settings.db_url,
        "CARNET_API_URL": settings.api_url,
        "CARNET_PUBLIC_URL": settings.public_url,
        "CARNET_SMTP_HOST": settings.smtp_host,
        "CARNET_SMTP_PORT": str(settings.smtp_port),
        "CARNET_MAIL_FROM": settings.mail_from,
        "CARNET_OUTBOX_DIR": settings.outbox_dir,
        "CARNET_CHROMIUM": settings.chromium_path,
    }

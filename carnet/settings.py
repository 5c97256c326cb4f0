"""Settings shared by every Carnet process (Hub hooks, the Carnet service, the Viewer, the scheduler).

One ``Configurable`` read by all parts, as Voila does with ``VoilaConfiguration``. Values come from, in order:
traitlets config (``c.CarnetSettings.x = ...`` in any Jupyter/Hub config file), environment variables
(``CARNET_*``, how the Hub hands settings to the services it starts), then the defaults below.
"""

import os
import re
from pathlib import Path

from traitlets import Float, Integer, List, Unicode, default, validate
from traitlets.config import Configurable

# carnet.isolation's account names: <prefix><user id> must stay a valid name of at most 32 characters.
_ACCOUNT_PREFIX = re.compile(r"[a-z][a-z0-9-]{0,23}")


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

    job_run_timeout_seconds = Float(
        help="""Longest time, in seconds, the notebook of one job run may take as a whole (each cell has its
        own limit too); past it the run fails with a clear error and its processes are stopped, so a stuck
        run never holds up the runs queued behind it. Environment: CARNET_JOB_RUN_TIMEOUT. Default: 900.""",
    ).tag(config=True)

    @default("job_run_timeout_seconds")
    def _default_job_run_timeout(self):
        return float(os.environ.get("CARNET_JOB_RUN_TIMEOUT", "900"))

    warehouse_url = Unicode(
        help="""Where organizations' warehouses live. Empty (the default): one DuckDB file per organization
        in its data directory (embedded, nothing to run). A PostgreSQL URL,
        postgresql+psycopg://user:password@host:5432/dbname (pip install carnet[postgres]): one schema per
        organization in that database, named carnet_org_<id>; same loads, reads and API. The database
        user needs CREATE on the database. Environment: CARNET_WAREHOUSE_URL.""",
    ).tag(config=True)

    @default("warehouse_url")
    def _default_warehouse_url(self):
        return os.environ.get("CARNET_WAREHOUSE_URL", "")

    @validate("warehouse_url")
    def _postgres_warehouse_url(self, proposal):
        value = proposal["value"].strip()
        if value and not value.startswith(("postgresql://", "postgresql+psycopg://")):
            raise ValueError(
                "warehouse_url must be empty (DuckDB files) or a postgresql+psycopg:// URL, "
                f"not {value.split(':', 1)[0]!r}"
            )
        return value.replace("postgresql://", "postgresql+psycopg://", 1)

    warehouse_memory_limit = Unicode(
        help="""Most memory one organization's DuckDB warehouse may use in the Carnet service (loads and
        queries; past it DuckDB spills to a temporary folder beside the file), e.g. 1GB or 512MB. Empty:
        DuckDB's own default (80% of the machine's memory, per warehouse open at once).
        Environment: CARNET_WAREHOUSE_MEMORY_LIMIT. Default: 1GB.""",
    ).tag(config=True)

    @default("warehouse_memory_limit")
    def _default_warehouse_memory_limit(self):
        return os.environ.get("CARNET_WAREHOUSE_MEMORY_LIMIT", "1GB")

    @validate("warehouse_memory_limit")
    def _memory_size(self, proposal):
        value = proposal["value"].strip()
        if value and not re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", value, re.IGNORECASE):
            raise ValueError("warehouse_memory_limit must be a size such as 512MB or 2GB (or empty)")
        return value

    warehouse_schema_prefix = Unicode(
        help="""With a PostgreSQL warehouse (warehouse_url), the org with id N has the schema <prefix>N.
        Two Carnet installations may share one database with different prefixes. Letters, digits and
        underscores, starting with a letter. Environment: CARNET_WAREHOUSE_SCHEMA_PREFIX.
        Default: carnet_org_.""",
    ).tag(config=True)

    @default("warehouse_schema_prefix")
    def _default_warehouse_schema_prefix(self):
        return os.environ.get("CARNET_WAREHOUSE_SCHEMA_PREFIX", "carnet_org_")

    @validate("warehouse_schema_prefix")
    def _identifier_prefix(self, proposal):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,39}", proposal["value"]):
            raise ValueError("warehouse_schema_prefix must be letters, digits and underscores (at most 40)")
        return proposal["value"]

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

    smtp_security = Unicode(
        help="""How the connection to smtp_host is protected: "none" (plain SMTP), "starttls" (plain, then
        upgraded with STARTTLS; refused if the server does not offer it) or "ssl" (TLS from the first byte,
        usually port 465). TLS certificates are always verified (see smtp_ca_file). An organization's own
        SMTP settings (PUT /api/v1/org/mail) replace all of these for its mail.
        Environment: CARNET_SMTP_SECURITY. Default: none.""",
    ).tag(config=True)

    @default("smtp_security")
    def _default_smtp_security(self):
        return self._check_smtp_security(os.environ.get("CARNET_SMTP_SECURITY", "none"))

    @validate("smtp_security")
    def _validate_smtp_security(self, proposal):
        return self._check_smtp_security(proposal["value"])

    @staticmethod
    def _check_smtp_security(value: str) -> str:
        if value not in ("none", "starttls", "ssl"):
            raise ValueError(f"smtp_security must be none, starttls or ssl, not {value!r}")
        return value

    smtp_username = Unicode(
        help="""User name to log in to smtp_host with (empty: no login). The password is never sent over a
        connection that is not encrypted: a login needs smtp_security starttls or ssl.
        Environment: CARNET_SMTP_USERNAME.""",
    ).tag(config=True)

    @default("smtp_username")
    def _default_smtp_username(self):
        return os.environ.get("CARNET_SMTP_USERNAME", "")

    smtp_password = Unicode(
        help="Password of smtp_username. Environment: CARNET_SMTP_PASSWORD.",
    ).tag(config=True)

    @default("smtp_password")
    def _default_smtp_password(self):
        return os.environ.get("CARNET_SMTP_PASSWORD", "")

    smtp_ca_file = Unicode(
        help="""PEM file of the certificate authorities trusted for SMTP over TLS (the platform's server
        and organizations' own), instead of the system's: for a mail server with a certificate from a
        private CA. Empty: the system's CAs. Environment: CARNET_SMTP_CA_FILE.""",
    ).tag(config=True)

    @default("smtp_ca_file")
    def _default_smtp_ca_file(self):
        return os.environ.get("CARNET_SMTP_CA_FILE", "")

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

    hub_auth_cache_seconds = Integer(
        help="""Seconds the Carnet service, the Viewer and Studio servers trust the Hub's answer about who a
        browser cookie or Hub token belongs to before asking the Hub again. 0 (the default) asks the Hub on
        every request: signing out of the Hub, or being disabled, ends the session on every Carnet server at
        once, for one small request to the Hub's API per request. A positive value spares the Hub that
        request but keeps a signed-out or revoked session working for up to that many seconds (JupyterHub's
        own default is 300). Environment: CARNET_HUB_AUTH_CACHE_SECONDS.""",
    ).tag(config=True)

    @default("hub_auth_cache_seconds")
    def _default_hub_auth_cache_seconds(self):
        return _not_negative(
            "CARNET_HUB_AUTH_CACHE_SECONDS", int(os.environ.get("CARNET_HUB_AUTH_CACHE_SECONDS", "0"))
        )

    trusted_proxy_hops = Integer(
        help="""How many proxies in front of Carnet append to X-Forwarded-For and are trusted to tell the
        truth: the audit log and the sign-in lockout log record the address that many entries from the
        right of that header (a client can put anything at its left). 1 (the default) is the Hub's own
        configurable-http-proxy: the address recorded is the one that connected to it. Raise it by one
        for each further proxy that appends the header (a load balancer or TLS terminator in front of the
        Hub); 0 ignores the header and records the direct peer. The header is only read when the direct
        peer is a loopback address (the Hub's proxy runs on the same machine).
        Environment: CARNET_TRUSTED_PROXY_HOPS.""",
    ).tag(config=True)

    @default("trusted_proxy_hops")
    def _default_trusted_proxy_hops(self):
        return _not_negative(
            "CARNET_TRUSTED_PROXY_HOPS", int(os.environ.get("CARNET_TRUSTED_PROXY_HOPS", "1"))
        )

    @validate("trusted_proxy_hops", "hub_auth_cache_seconds")
    def _validate_not_negative(self, proposal):
        return _not_negative(proposal["trait"].name, proposal["value"])

    invitation_days = Integer(
        help="""Days an invitation link stays usable. An admin who creates a person with an invitation (or
        re-invites them) gets a link to the Hub page /hub/carnet/invite/<token> where the person chooses
        their password; the link works once, a new one kills the old one, and after this many days it
        answers 410 Gone and the admin must issue a new one. Environment: CARNET_INVITATION_DAYS.
        Default: 7.""",
    ).tag(config=True)

    @default("invitation_days")
    def _default_invitation_days(self):
        return int(os.environ.get("CARNET_INVITATION_DAYS", "7"))

    @validate("invitation_days")
    def _positive_invitation_days(self, proposal):
        if proposal["value"] < 1:
            raise ValueError("invitation_days must be at least 1")
        return proposal["value"]

    os_account_prefix = Unicode(
        help="""Start of the names of the operating-system accounts people's code runs as when Carnet runs
        as root (carnet/isolation.py): user 7 runs as ``<prefix>7``. Two Carnet installations on one machine
        (staging beside production; the test suite's parallel workers) need prefixes of their own, or their
        people with the same ids would share an account and its home. Lowercase letters, digits and ``-``,
        starting with a letter, at most 24 characters (account names have at most 32). Environment:
        CARNET_OS_ACCOUNT_PREFIX. Default: carnet-u""",
    ).tag(config=True)

    @default("os_account_prefix")
    def _default_os_account_prefix(self):
        return os.environ.get("CARNET_OS_ACCOUNT_PREFIX") or "carnet-u"

    @validate("os_account_prefix")
    def _valid_os_account_prefix(self, proposal):
        if not _ACCOUNT_PREFIX.fullmatch(proposal["value"]):
            raise ValueError(
                f"os_account_prefix {proposal['value']!r}: lowercase letters, digits and '-', starting "
                "with a letter, at most 24 characters"
            )
        return proposal["value"]

    # -- the Viewer's kernels (extension/render_pool.py) ------------------------------------------------
    viewer_max_kernels_per_app = Integer(
        help="""Most Viewer kernels one app may hold at once (kernels of open pages plus pre-rendered ones
        waiting in the render pool). Beyond it a new visitor gets a "busy, try again in a moment" page (HTTP
        503 with Retry-After). 0: no cap. Environment: CARNET_VIEWER_MAX_KERNELS_PER_APP.""",
    ).tag(config=True)

    @default("viewer_max_kernels_per_app")
    def _default_viewer_max_kernels_per_app(self):
        return int(os.environ.get("CARNET_VIEWER_MAX_KERNELS_PER_APP", "20"))

    viewer_max_kernels_per_org = Integer(
        help="""Most Viewer kernels the apps of one organization may hold at once, counted as for
        viewer_max_kernels_per_app. 0: no cap. Environment: CARNET_VIEWER_MAX_KERNELS_PER_ORG.""",
    ).tag(config=True)

    @default("viewer_max_kernels_per_org")
    def _default_viewer_max_kernels_per_org(self):
        return int(os.environ.get("CARNET_VIEWER_MAX_KERNELS_PER_ORG", "60"))

    viewer_pool_size = Integer(
        help="""Pre-rendered pages (each a live kernel, ~150-350 MB) the Viewer keeps ready per (app version,
        row-level context, filter values) that was opened: the next visitor with the same key gets the page
        at once and the kernel behind it. 0 turns the render pool off. Environment:
        CARNET_VIEWER_POOL_SIZE.""",
    ).tag(config=True)

    @default("viewer_pool_size")
    def _default_viewer_pool_size(self):
        return int(os.environ.get("CARNET_VIEWER_POOL_SIZE", "1"))

    viewer_pool_ttl = Integer(
        help="""Seconds a pre-rendered page waits in the render pool before its kernel is shut down (its
        data may be stale by then). Environment: CARNET_VIEWER_POOL_TTL.""",
    ).tag(config=True)

    @default("viewer_pool_ttl")
    def _default_viewer_pool_ttl(self):
        return int(os.environ.get("CARNET_VIEWER_POOL_TTL", "600"))

    viewer_prerender_concurrency = Integer(
        help="""Pre-renders the Viewer runs at the same time (each runs a whole notebook in a new kernel). A
        burst of viewers is served snapshots at once (carnet/extension/snapshots.py) while their own live
        pages are rendered this many at a time, instead of every notebook at once on the same cores.
        Environment: CARNET_VIEWER_PRERENDER_CONCURRENCY.""",
    ).tag(config=True)

    @default("viewer_prerender_concurrency")
    def _default_viewer_prerender_concurrency(self):
        value = int(os.environ.get("CARNET_VIEWER_PRERENDER_CONCURRENCY", "2"))
        return _at_least_one("viewer_prerender_concurrency", value)

    @validate("viewer_prerender_concurrency")
    def _validate_viewer_prerender_concurrency(self, proposal):
        return _at_least_one("viewer_prerender_concurrency", proposal["value"])

    @validate(
        "viewer_max_kernels_per_app", "viewer_max_kernels_per_org", "viewer_pool_size", "viewer_pool_ttl"
    )
    def _validate_viewer_not_negative(self, proposal):
        return _not_negative(proposal["trait"].name, proposal["value"])

    # -- secrets at rest (carnet/crypto.py) and outgoing fetches (carnet/net_guard.py) ---------------
    data_key = Unicode(
        help="""The key that encrypts data-source credentials at rest (AES-256-GCM): base64 of 32 random
        bytes, e.g. from `python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"`.
        Empty (the default): the key is read from data_key_file, which is created with 0600 permissions on
        first use. Only the Carnet service needs it; it is never handed to kernels. Losing the key loses
        every stored credential. Environment: CARNET_DATA_KEY.""",
    ).tag(config=True)

    @default("data_key")
    def _default_data_key(self):
        return os.environ.get("CARNET_DATA_KEY", "")

    data_key_old = List(
        Unicode(),
        help="""Retired data keys (base64 of 32 bytes each), still used to decrypt values written before a
        key rotation; new values are always encrypted with the current key. Files next to data_key_file
        named data_key.old.<anything> are read too. Environment: CARNET_DATA_KEY_OLD, comma-separated.""",
    ).tag(config=True)

    @default("data_key_old")
    def _default_data_key_old(self):
        return [k.strip() for k in os.environ.get("CARNET_DATA_KEY_OLD", "").split(",") if k.strip()]

    data_key_file = Unicode(
        help="""File holding the data key when data_key is empty: created on first use (0600, in a 0700
        folder); Carnet refuses to use it when group or others can read it. Retired keys go next to it as
        data_key.old.<suffix>. Environment: CARNET_DATA_KEY_FILE. Default: <data_dir>/secrets/data_key.""",
    ).tag(config=True)

    @default("data_key_file")
    def _default_data_key_file(self):
        return os.environ.get("CARNET_DATA_KEY_FILE") or str(Path(self.data_dir) / "secrets" / "data_key")

    fetch_allow_hosts = List(
        Unicode(),
        help="""Hosts that Carnet may fetch from although they are not public (REST sources and anything else
        that fetches a URL refuse loopback, private, link-local and other non-public addresses, and
        redirects to them). Each entry is a host name or IP address, optionally with :port (host:8080,
        [::1]:8080), or a CIDR network (10.20.0.0/16). A name entry trusts whatever that name resolves to;
        an address or network entry trusts those addresses only. Environment: CARNET_FETCH_ALLOW_HOSTS,
        comma-separated. Default: none.""",
    ).tag(config=True)

    @default("fetch_allow_hosts")
    def _default_fetch_allow_hosts(self):
        return [h.strip() for h in os.environ.get("CARNET_FETCH_ALLOW_HOSTS", "").split(",") if h.strip()]

    sql_allow_hosts = List(
        Unicode(),
        help="""SQL servers that connections may reach although they are not public. Every address a
        connection's host resolves to must be public (not loopback, private, link-local...) unless listed
        here, so that nobody can point a data source at the platform's own database or other internal
        services. Same entry forms as fetch_allow_hosts: host[:port] or a CIDR network (10.20.0.0/16); list
        your database network here for a self-hosted installation. Environment: CARNET_SQL_ALLOW_HOSTS,
        comma-separated. Default: none.""",
    ).tag(config=True)

    @default("sql_allow_hosts")
    def _default_sql_allow_hosts(self):
        return [h.strip() for h in os.environ.get("CARNET_SQL_ALLOW_HOSTS", "").split(",") if h.strip()]

    fetch_max_bytes = Integer(
        help="""Largest response body (after decompression) Carnet accepts when it fetches a URL; a bigger
        one is refused with a clear error. Environment: CARNET_FETCH_MAX_BYTES. Default: 100 MB.""",
    ).tag(config=True)

    @default("fetch_max_bytes")
    def _default_fetch_max_bytes(self):
        return int(os.environ.get("CARNET_FETCH_MAX_BYTES", str(100 * 1024 * 1024)))

    fetch_timeout = Float(
        help="""Seconds Carnet waits to connect to a fetched URL, and for each read from it.
        Environment: CARNET_FETCH_TIMEOUT. Default: 30.""",
    ).tag(config=True)

    @default("fetch_timeout")
    def _default_fetch_timeout(self):
        return float(os.environ.get("CARNET_FETCH_TIMEOUT", "30"))

    @validate("fetch_max_bytes", "fetch_timeout")
    def _positive_fetch_limits(self, proposal):
        if proposal["value"] <= 0:
            raise ValueError(f"{proposal['trait'].name} must be positive")
        return proposal["value"]

    source_timeout_seconds = Float(
        help="""Longest time, in seconds, one read of a data source may take (a SQL statement timeout, the
        whole of a REST fetch); past it the read fails with a clear 504 error.
        Environment: CARNET_SOURCE_TIMEOUT_SECONDS. Default: 60.""",
    ).tag(config=True)

    @default("source_timeout_seconds")
    def _default_source_timeout_seconds(self):
        return float(os.environ.get("CARNET_SOURCE_TIMEOUT_SECONDS", "60"))

    source_max_rows = Integer(
        help="""Most rows one read of a data source may return (after filters and aggregates are applied
        where the data lives); more fails with a clear 413 error asking for a filter or an aggregate.
        Environment: CARNET_SOURCE_MAX_ROWS. Default: 10,000,000.""",
    ).tag(config=True)

    @default("source_max_rows")
    def _default_source_max_rows(self):
        return int(os.environ.get("CARNET_SOURCE_MAX_ROWS", "10000000"))

    @validate("source_timeout_seconds", "source_max_rows")
    def _positive_source_limits(self, proposal):
        if proposal["value"] <= 0:
            raise ValueError(f"{proposal['trait'].name} must be positive")
        return proposal["value"]

    upload_max_bytes = Integer(
        help="""Largest file, in bytes, that POST /api/v1/uploads (and /uploads/preview) accepts. The body is
        counted while it streams to a temporary file in the organization's data directory, so a bigger
        upload is refused with a 413 before it fills the disk or the memory; an .xlsx may also unpack to at
        most ten times this size. Environment: CARNET_UPLOAD_MAX_BYTES. Default: 200 MB.""",
    ).tag(config=True)

    @default("upload_max_bytes")
    def _default_upload_max_bytes(self):
        return int(os.environ.get("CARNET_UPLOAD_MAX_BYTES", str(200 * 1024 * 1024)))

    @validate("upload_max_bytes")
    def _positive_upload_max_bytes(self, proposal):
        if proposal["value"] <= 0:
            raise ValueError("upload_max_bytes must be positive")
        return proposal["value"]

    push_max_rows = Integer(
        help="""Most rows one request to a push endpoint (POST /api/v1/push/<secret>) may carry. Outside
        systems push small batches as they happen; bulk data goes through POST .../warehouse/tables/<table>/
        load (Arrow, Parquet, CSV, streamed). A request over it is a 413 and loads nothing.
        Environment: CARNET_PUSH_MAX_ROWS. Default: 10000.""",
    ).tag(config=True)

    @default("push_max_rows")
    def _default_push_max_rows(self):
        return int(os.environ.get("CARNET_PUSH_MAX_ROWS", "10000"))

    push_max_bytes = Integer(
        help="""Largest JSON body, in bytes, of one request to a push endpoint: a larger one is a 413 and
        loads nothing. Environment: CARNET_PUSH_MAX_BYTES. Default: 5 MB.""",
    ).tag(config=True)

    @default("push_max_bytes")
    def _default_push_max_bytes(self):
        return int(os.environ.get("CARNET_PUSH_MAX_BYTES", str(5 * 1024 * 1024)))

    @validate("push_max_rows", "push_max_bytes")
    def _positive_push_limits(self, proposal):
        if proposal["value"] <= 0:
            raise ValueError(f"{proposal['trait'].name} must be positive")
        return proposal["value"]

    cache_backend = Unicode(
        help="""Where the result cache of source reads (carnet.query.cache) keeps its entries: "disk" (the
        default, Arrow IPC files under <data_dir>/cache/<org id>/, shared by the service's restarts),
        "memory" (inside the Carnet service process, lost when it stops) or "redis" (cache_redis_url; for
        several service processes; pip install carnet[redis]). Each source chooses whether it is cached at
        all (its cache policy). Environment: CARNET_CACHE_BACKEND.""",
    ).tag(config=True)

    @default("cache_backend")
    def _default_cache_backend(self):
        return self._check_cache_backend(os.environ.get("CARNET_CACHE_BACKEND", "disk"))

    @validate("cache_backend")
    def _validate_cache_backend(self, proposal):
        return self._check_cache_backend(proposal["value"])

    @staticmethod
    def _check_cache_backend(value: str) -> str:
        if value not in ("memory", "disk", "redis"):
            raise ValueError(f"cache_backend must be memory, disk or redis, not {value!r}")
        return value

    cache_max_bytes = Integer(
        help="""Largest total size of the result cache, in bytes, for the memory backend (per service
        process) and the disk backend (all organizations together); past it the least recently used
        entries are removed. A result bigger than this is not cached. The redis backend is bounded by
        Redis's own maxmemory setting instead. Environment: CARNET_CACHE_MAX_BYTES. Default: 1 GiB.""",
    ).tag(config=True)

    @default("cache_max_bytes")
    def _default_cache_max_bytes(self):
        return int(os.environ.get("CARNET_CACHE_MAX_BYTES", str(1024**3)))

    @validate("cache_max_bytes")
    def _positive_cache_max_bytes(self, proposal):
        if proposal["value"] <= 0:
            raise ValueError("cache_max_bytes must be positive")
        return proposal["value"]

    cache_redis_url = Unicode(
        help="""Redis URL of the redis cache backend, e.g. redis://127.0.0.1:6379/0 or
        rediss://:password@host:6380/2. Entries are keys <cache_redis_prefix><org id>:<source id>:<hash>,
        which expire by themselves under the ttl policy. Environment: CARNET_CACHE_REDIS_URL.
        Default: redis://127.0.0.1:6379/0.""",
    ).tag(config=True)

    @default("cache_redis_url")
    def _default_cache_redis_url(self):
        return os.environ.get("CARNET_CACHE_REDIS_URL", "redis://127.0.0.1:6379/0")

    cache_redis_prefix = Unicode(
        help="""Start of every Redis key of the result cache (then <org id>:<source id>:<hash>): lets
        several Carnet installations share one Redis database. Environment: CARNET_CACHE_REDIS_PREFIX.
        Default: carnet:cache:""",
    ).tag(config=True)

    @default("cache_redis_prefix")
    def _default_cache_redis_prefix(self):
        return os.environ.get("CARNET_CACHE_REDIS_PREFIX", "carnet:cache:")

    ga4_api_endpoint = Unicode(
        help="""Where Google Analytics 4 sources send their report requests (the Data API's base URL, with
        the service account's access token). An operator setting only, never a source option: it decides
        where credentials go. Change it only for a proxy or a local stand-in (the tests use one).
        Environment: CARNET_GA4_API_ENDPOINT. Default: https://analyticsdata.googleapis.com""",
    ).tag(config=True)

    @default("ga4_api_endpoint")
    def _default_ga4_api_endpoint(self):
        return os.environ.get("CARNET_GA4_API_ENDPOINT", "https://analyticsdata.googleapis.com")

    ga4_token_uri = Unicode(
        help="""The OAuth token endpoint Google Analytics 4 sources exchange their service account's signed
        assertion at. A service-account key whose token_uri differs is refused, so a key cannot send its
        signed assertion elsewhere. Environment: CARNET_GA4_TOKEN_URI.
        Default: https://oauth2.googleapis.com/token""",
    ).tag(config=True)

    @default("ga4_token_uri")
    def _default_ga4_token_uri(self):
        return os.environ.get("CARNET_GA4_TOKEN_URI", "https://oauth2.googleapis.com/token")

    @validate("ga4_api_endpoint", "ga4_token_uri")
    def _http_ga4_urls(self, proposal):
        if not proposal["value"].startswith(("https://", "http://")):
            raise ValueError(f"{proposal['trait'].name} must be an http(s) URL")
        return proposal["value"].rstrip("/")

    # -- derived paths: one place decides where each kind of data lives ------------------------------
    def org_dir(self, org_id: int) -> Path:
        return Path(self.data_dir) / "orgs" / str(org_id)

    def warehouse_path(self, org_id: int) -> Path:
        return self.org_dir(org_id) / "warehouse.duckdb"

    def warehouse_schema(self, org_id: int) -> str:
        """The org's schema when the warehouse is PostgreSQL (``warehouse_url``)."""
        return f"{self.warehouse_schema_prefix}{int(org_id)}"

    @property
    def published_dir(self) -> Path:
        """Snapshots of published notebooks; the Viewer's root directory (read-only for authors)."""
        return Path(self.data_dir) / "published"

    @property
    def runs_dir(self) -> Path:
        return Path(self.data_dir) / "runs"


def _at_least_one(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be at least 1")
    return value


def _not_negative(name: str, value: int) -> int:
    # Validators do not see dynamic defaults (the environment): both paths call this.
    if value < 0:
        raise ValueError(f"{name} cannot be negative")
    return value


def environment_for(settings: CarnetSettings) -> dict:
    """The CARNET_* variables that hand ``settings`` to a child process."""
    return {
        "CARNET_DATA_DIR": settings.data_dir,
        "CARNET_DB_URL": settings.db_url,
        "CARNET_API_URL": settings.api_url,
        "CARNET_PUBLIC_URL": settings.public_url,
        "CARNET_SMTP_HOST": settings.smtp_host,
        "CARNET_SMTP_PORT": str(settings.smtp_port),
        "CARNET_SMTP_SECURITY": settings.smtp_security,
        "CARNET_SMTP_USERNAME": settings.smtp_username,
        "CARNET_SMTP_PASSWORD": settings.smtp_password,
        "CARNET_SMTP_CA_FILE": settings.smtp_ca_file,
        "CARNET_MAIL_FROM": settings.mail_from,
        "CARNET_OUTBOX_DIR": settings.outbox_dir,
        "CARNET_CHROMIUM": settings.chromium_path,
        "CARNET_INVITATION_DAYS": str(settings.invitation_days),
        "CARNET_OS_ACCOUNT_PREFIX": settings.os_account_prefix,
    }

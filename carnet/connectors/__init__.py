"""Connectors: code that reads a source's data on the server side, with the stored credentials.

`sql` runs SQL table/query sources on any SQLAlchemy URL (read-only, limited, pushed down);
`sql_settings` validates their connection settings and `{{var}}` variables; `read_only_sql` is the parser
check of query sources. Kernels never import these: they call the REST API.
"""

from carnet.connectors.sql import Limits, SqlRead, TableRead, read_arrow
from carnet.connectors.sql_settings import ConnectionSettings, settings_from_url, validate_connection

__all__ = [
    "ConnectionSettings",
    "Limits",
    "SqlRead",
    "TableRead",
    "read_arrow",
    "settings_from_url",
    "validate_connection",
]

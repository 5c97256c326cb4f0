"""The OpenAPI 3.1 description of the REST API, served at /api/v1/openapi.json.

Paths are written here by hand (they are the contract); a test checks that every route the service
serves is described here and the other way round.
"""

from __future__ import annotations

import carnet

ERROR = {"$ref": "#/components/schemas/Error"}


def _op(summary: str, action: str | None, *, body: dict | None = None, ok: str = "200", **extra) -> dict:
    op = {
        "summary": summary,
        "responses": {
            ok: {"description": "Success"},
            "400": {"description": "Invalid input", "content": {"application/json": {"schema": ERROR}}},
            "401": {"description": "Not authenticated", "content": {"application/json": {"schema": ERROR}}},
            "403": {"description": "Not allowed", "content": {"application/json": {"schema": ERROR}}},
            "404": {"description": "Not found", "content": {"application/json": {"schema": ERROR}}},
        },
    }
    if action:
        op["x-carnet-permission"] = action
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    op.update(extra)
    return op


def _obj(required: list[str], **props) -> dict:
    return {"type": "object", "required": required, "properties": props}


def _with_response(status: str, response: dict, op: dict) -> dict:
    """``op`` with one more documented response (e.g. a 502 from a server Carnet talks to)."""
    op["responses"][status] = response
    return op


STR = {"type": "string"}
INT = {"type": "integer"}
OBJ = {"type": "object"}
# Admins only: read as that member of the org (through that person's row rules); audited.
AS_USER = [{"name": "as_user", "in": "query", "schema": {"type": "integer"}}]
CONNECTION_SETTINGS = {
    "type": "object",
    "description": "{dialect, driver, host, port, database, username, options} or {url}; never the password",
}
AUDIT_FILTERS = [
    {"name": "action", "in": "query", "schema": STR, "description": "prefix, e.g. login."},
    {"name": "actor", "in": "query", "schema": STR, "description": "exact email"},
    {"name": "since", "in": "query", "schema": {**STR, "format": "date-time"}, "description": "inclusive"},
    {"name": "until", "in": "query", "schema": {**STR, "format": "date-time"}, "description": "exclusive"},
]

UPLOAD_BODY = {
    "required": True,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
UPLOAD_PARAMETERS = [
    {
        "name": "format",
        "in": "query",
        "required": True,
        "schema": {"enum": ["csv", "tsv", "xlsx", "parquet"]},
    },
    {
        "name": "delimiter",
        "in": "query",
        "schema": STR,
        "description": "csv: one character or 'tab' (sniffed)",
    },
    {"name": "encoding", "in": "query", "schema": STR, "description": "csv/tsv (sniffed)"},
    {
        "name": "header",
        "in": "query",
        "schema": {"type": "boolean"},
        "description": "first row names (sniffed)",
    },
    {"name": "skip_rows", "in": "query", "schema": {**INT, "minimum": 0}, "description": "lines before it"},
    {"name": "decimal", "in": "query", "schema": {"enum": [".", ","]}, "description": "csv (sniffed)"},
    {"name": "null", "in": "query", "schema": STR, "description": "csv: a value read as null (repeatable)"},
    {"name": "quote", "in": "query", "schema": STR, "description": 'csv: default "'},
    {"name": "sheet", "in": "query", "schema": STR, "description": "xlsx: a name, or a number (1 = first)"},
]

# The test mail's answer when the mail server fails: 502 with the reason (the server's reply).
MAIL_SERVER_ERROR = {
    "description": "The mail server failed",
    "content": {"application/json": {"schema": ERROR}},
}

PATHS = {
    "/api/v1/": {"get": _op("API name and version (public)", None)},
    "/api/v1/openapi.json": {"get": _op("This document (public)", None)},
    "/api/v1/me": {"get": _op("The calling person, their organization and role", "me:read")},
    "/api/v1/sources": {
        "get": _op("Data sources of the caller's organization", "sources:list"),
        "post": _op(
            "Create a data source",
            "sources:create",
            ok="201",
            body=_obj(
                ["name", "kind", "options"],
                name=STR,
                kind=STR,
                description=STR,
                options={"type": "object"},
                connection={"type": ["integer", "string"], "description": "SQL kinds: connection id or name"},
            ),
        ),
    },
    "/api/v1/sources/{name}": {
        "get": _op("One source, with its columns (its options only for studio and admin)", "sources:list"),
        "patch": _op(
            "Change a source's name, description or options (its kind stays)",
            "sources:manage",
            body=_obj([], name=STR, description=STR, options={"type": "object"}),
        ),
        "delete": _op("Delete a source", "sources:manage", ok="204"),
    },
    "/api/v1/sources/{name}/test": {
        "post": _op("Check that the source answers: returns its columns, reads no rows", "sources:manage")
    },
    "/api/v1/sources/{name}/data": {
        "get": _op(
            "The source's rows as an Arrow IPC stream (application/vnd.apache.arrow.stream)",
            "sources:read_data",
            parameters=[{"name": "limit", "in": "query", "schema": INT}],
        )
    },
    "/api/v1/sources/{name}/query": {
        "post": _op(
            "Query one source (filters, aggregates, order and limit run where the data lives when the source "
            "can): Arrow IPC stream; 413 past the row limit, 504 past the time limit",
            "sources:read_data",
            parameters=AS_USER,
            body=_obj(
                [],
                columns={"type": "array", "items": STR},
                where={"type": "array", "description": "[[column, operator, value], ...]"},
                order_by={"type": "array", "description": "column or [column, 'asc'|'desc']"},
                limit=INT,
                offset={**INT, "minimum": 0, "description": "rows skipped before the limit (pages)"},
                group_by={"type": "array", "items": STR},
                aggregates={
                    "type": "object",
                    "description": "{column: sum|avg|min|max|count|count_distinct}",
                },
                variables={"type": "object"},
            ),
        )
    },
    "/api/v1/query": {
        "post": _op(
            "SQL over the organization's sources, named {source} (one read-only SELECT): Arrow IPC stream",
            "sources:read_data",
            parameters=AS_USER,
            body=_obj(["sql"], sql=STR, variables={"type": "object"}),
        )
    },
    "/api/v1/sources/{name}/cache": {
        "put": _op(
            "Set the source's result-cache policy: none, ttl (with ttl_seconds) or invalidate (until the "
            "source changes); drops its cached results",
            "sources:manage",
            body=_obj(
                ["policy"],
                policy={"type": "string", "enum": ["none", "ttl", "invalidate"]},
                ttl_seconds={"type": ["integer", "null"], "minimum": 1},
            ),
        ),
        "delete": _op("Drop every cached result of the source", "sources:manage", ok="204"),
    },
    "/api/v1/connections": {
        "get": _op("The organization's SQL connections (passwords only as set/unset)", "connections:read"),
        "post": _op(
            "Create a connection: settings (fields or {url}) and a write-only password",
            "connections:manage",
            ok="201",
            body=_obj(["name", "settings"], name=STR, kind=STR, settings=CONNECTION_SETTINGS, password=STR),
        ),
    },
    "/api/v1/connections/test": {
        "post": _op(
            "Try settings before saving them: connects, or says why not (password, host, refused, timeout, "
            "TLS)",
            "connections:manage",
            body=_obj(["settings"], kind=STR, settings=CONNECTION_SETTINGS, password=STR, variables=OBJ),
        )
    },
    "/api/v1/connections/{connection_id}": {
        "get": _op("One connection, with the names of the sources using it", "connections:read"),
        "patch": _op(
            "Change a connection (password: absent or 'unchanged' keeps it, a string replaces it, null "
            "clears it); the versions of its sources are bumped",
            "connections:manage",
            body=_obj([], name=STR, settings=CONNECTION_SETTINGS, password={"type": ["string", "null"]}),
        ),
        "delete": _op("Delete a connection (409 while sources use it)", "connections:manage", ok="204"),
    },
    "/api/v1/connections/{connection_id}/test": {
        "post": _op(
            "Connect with the saved settings and password, or say why not",
            "connections:manage",
            body=_obj([], variables=OBJ),
        )
    },
    "/api/v1/uploads": {
        "post": _op(
            "Upload a CSV/TSV, Excel (.xlsx) or Parquet file (the raw file as the body, "
            "application/octet-stream) into the caller's warehouse: creates or replaces the table and "
            "creates the warehouse_table source (or bumps its version). 201 {table, rows, bytes, columns, "
            "renamed (warehouse column -> the file's name), settings (sniffed or given), source}. "
            "Malformed files are a 400 naming the line, nothing stored; over upload_max_bytes a 413; a "
            "source of that name that is not this table a 409",
            "sources:create",
            ok="201",
            parameters=UPLOAD_PARAMETERS
            + [
                {"name": "table", "in": "query", "required": True, "schema": STR},
                {"name": "source", "in": "query", "schema": STR, "description": "default: the table name"},
            ],
            requestBody=UPLOAD_BODY,
        )
    },
    "/api/v1/uploads/preview": {
        "post": _op(
            "Parse an upload as POST /uploads would and store nothing: {format, settings, columns, renamed, "
            "rows (the first 20, JSON values), total_rows, sheets (xlsx)}",
            "sources:create",
            parameters=UPLOAD_PARAMETERS,
            requestBody=UPLOAD_BODY,
        )
    },
    "/api/v1/warehouse/tables": {
        "get": _op(
            "Tables of the organization's warehouse: {tables: [{name, rows, columns}]}; rows is null for "
            "a table with row rules when the caller is restricted (viewer, analyst)",
            "warehouse:read",
        )
    },
    "/api/v1/warehouse/tables/{table}": {
        "get": _op(
            "One warehouse table: {name, rows, columns: [{name, type}]}; rows null as in the list",
            "warehouse:read",
        )
    },
    "/api/v1/warehouse/tables/{table}/preview": {
        "get": _op(
            "The first rows of a table as JSON values: {table, columns, rows}",
            "warehouse:read",
            parameters=[{"name": "limit", "in": "query", "schema": {**INT, "minimum": 1, "maximum": 1000}}],
        )
    },
    "/api/v1/warehouse/tables/{table}/loads": {
        "get": _op(
            "Load history of a table, newest first: who, when, mode, rows in/out, status, error",
            "warehouse:read",
            parameters=[{"name": "limit", "in": "query", "schema": {**INT, "minimum": 1, "maximum": 1000}}],
        )
    },
    "/api/v1/warehouse/tables/{table}/load": {
        "post": _op(
            "Load the body (Arrow IPC stream, Parquet, or CSV/TSV/Excel parsed like an upload) into the "
            "table: replace (atomic swap), append, upsert or delete by key; type.<column>=int|float|decimal|"
            "decimal(p,s)|bool|date|datetime|datetime_tz|text forces a type. 200 {load_id, table, mode, "
            "status, rows_in, rows_out, duration_seconds, renamed (csv/tsv/xlsx: warehouse column -> the "
            "file's name)}; a header without rows is a 400; a bad value is a 400 naming the column and row, "
            "the table unchanged; over upload_max_bytes a 413. Sources over the table get a new version",
            "warehouse:load",
            parameters=[
                {
                    "name": "format",
                    "in": "query",
                    "schema": {"enum": ["arrow", "parquet", "csv", "tsv", "xlsx"]},
                },
                {
                    "name": "mode",
                    "in": "query",
                    "schema": {"enum": ["replace", "append", "upsert", "delete"]},
                },
                {"name": "key", "in": "query", "schema": STR, "description": "key columns, a,b"},
            ],
            requestBody={
                "required": True,
                "content": {
                    "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
        )
    },
    "/api/v1/warehouse/tables/{table}/batch": {
        "post": _op(
            "Insert, upsert and delete rows by key in one transaction (all or nothing): 200 as /load",
            "warehouse:load",
            body=_obj(
                ["key", "operations"],
                key={"type": "array", "items": STR},
                operations={
                    "type": "array",
                    "items": _obj(
                        ["op", "rows"],
                        op={"enum": ["insert", "upsert", "delete"]},
                        rows={"type": "array", "items": OBJ},
                    ),
                },
            ),
        )
    },
    "/api/v1/warehouse/tables/{table}/sync": {
        "post": _op(
            "Load what one of the org's sources answers (read as POST sources/{name}/query with an empty "
            "spec: same row cap, time limit and variables) into the table: 200 as /load, history origin "
            "sync. An unknown source is a 404; a source that fails to read a 4xx/502/504, the table "
            "unchanged; a warehouse_table source over the table itself a 400",
            "warehouse:load",
            body=_obj(
                ["source"],
                source=STR,
                mode={"enum": ["replace", "append", "upsert", "delete"]},
                key={"type": "array", "items": STR},
                types={"type": "object", "additionalProperties": STR},
                variables=OBJ,
            ),
        )
    },
    "/api/v1/warehouse/tables/{table}/push-endpoints": {
        "get": _op("Push endpoints of a table (never their secret)", "warehouse:load"),
        "post": _op(
            "Make a push endpoint: 201 with its secret url, shown this once. The table need not exist yet: "
            "the first push creates it",
            "warehouse:load",
            ok="201",
            body=_obj([], name=STR, mode={"enum": ["append", "upsert"]}, key={"type": "array", "items": STR}),
        ),
    },
    "/api/v1/warehouse/tables/{table}/push-endpoints/{endpoint_id}": {
        "delete": _op("Revoke a push endpoint: its URL answers 404 from now on", "warehouse:load", ok="204")
    },
    "/api/v1/push/{token}": {
        "post": _op(
            "Rows from an outside system, through a push endpoint's secret URL (the credential; no other "
            'auth): {"rows": [{...}]} or a JSON list, at most push_max_rows rows and push_max_bytes bytes; '
            "appended or upserted as the endpoint says. Unknown or revoked: 404",
            None,
            body={"type": ["object", "array"]},
        )
    },
    "/api/v1/apps": {
        "get": _op(
            "Apps the caller may open, favourites first then by title; each with tags, thumbnail_url (or "
            "null), favourite (the caller's) and versions (count). q matches title, description and tags "
            "(case-insensitive); tag (repeatable) must all be among the app's tags; favourites=true keeps "
            "the caller's favourites only",
            "apps:list",
            parameters=[
                {"name": "q", "in": "query", "schema": {**STR, "maxLength": 200}},
                {"name": "tag", "in": "query", "schema": {"type": "array", "items": STR}},
                {"name": "favourites", "in": "query", "schema": {"type": "boolean", "default": False}},
            ],
        ),
        "post": _op(
            "Publish a notebook as an app (creates it or adds a version; sharing is unchanged). tags: "
            "trimmed, lowercased, deduplicated, each 1-40 visible characters, at most 20; description and "
            "tags left out keep the app's; note describes the version",
            "apps:publish",
            ok="201",
            body=_obj(
                ["slug", "title", "notebook"],
                slug=STR,
                title=STR,
                description=STR,
                tags={"type": "array", "maxItems": 20, "items": {**STR, "maxLength": 40}},
                note={**STR, "maxLength": 500},
                notebook={"type": "object"},
            ),
        ),
    },
    "/api/v1/apps/{app_id}": {
        "get": _op(
            "One app (404 if unknown, another org's, or restricted and not shared with you)", "apps:read"
        ),
        "delete": _op(
            "Unpublish: delete the app, its versions, shares and snapshot files. 409 listing the jobs that "
            "run it, unless force=true (then those jobs and their runs are deleted too)",
            "apps:unpublish",
            ok="204",
            parameters=[{"name": "force", "in": "query", "schema": {"type": "boolean", "default": False}}],
        ),
        "patch": _op(
            "Change title, description and/or tags without a new version; any other field is a 400 naming it",
            "apps:publish",
            body={
                **_obj(
                    [],
                    title=STR,
                    description=STR,
                    tags={"type": "array", "maxItems": 20, "items": {**STR, "maxLength": 40}},
                ),
                "additionalProperties": False,
            },
        ),
    },
    "/api/v1/apps/{app_id}/versions": {
        "get": _op(
            "The app's versions, newest first: version, created_at, created_by (email), note, current",
            "apps:publish",
        )
    },
    "/api/v1/apps/{app_id}/versions/{version}/restore": {
        "post": _op(
            "Roll back: a new version copying that version's snapshot becomes current (history stays "
            "linear). 404 for an unknown version",
            "apps:publish",
            ok="201",
            body={**_obj([], note={**STR, "maxLength": 500}), "additionalProperties": False},
        )
    },
    "/api/v1/apps/{app_id}/thumbnail": {
        "get": _op("The app's thumbnail (image/png or image/jpeg); 404 when it has none", "apps:read"),
        "put": _op(
            "Set the thumbnail: the body is a PNG or JPEG file (decided by its first bytes; SVG and other "
            "formats are a 400), at most 1 MB (else 413)",
            "apps:publish",
            requestBody={
                "required": True,
                "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                },
            },
        ),
        "delete": _op("Remove the thumbnail (204 also when there is none)", "apps:publish", ok="204"),
    },
    "/api/v1/apps/{app_id}/public-link": {
        "get": _op(
            "The app's public link: {app_id, public: false}, or {app_id, public: true, created_at, "
            "created_by, sources} (never its URL again). Studio/admin of the app's org, where "
            "allow_public_apps is true (else 403); another org's app: 404 like an unknown one",
            "apps:share_public",
        ),
        "post": _op(
            "Make (or rotate) the app's public link: anyone with the returned url sees the app as an "
            "anonymous visitor, whose kernel reads only `sources` (default: the source names the current "
            "snapshot names) with no attributes (ruled sources show no rows). The url is in this answer "
            "only; a rotation ends the previous one. Audited as app.public_link.create",
            "apps:share_public",
            ok="201",
            body={
                "type": "object",
                "properties": {"sources": {"type": "array", "maxItems": 200, "items": STR}},
                "additionalProperties": False,
            },
        ),
        "delete": _op(
            "Revoke the public link (404 when there is none): its url and its visitors' kernel tokens "
            "stop at once. Audited as app.public_link.revoke",
            "apps:share_public",
            ok="204",
        ),
    },
    "/api/v1/apps/{app_id}/embed": {
        "post": _op(
            "A signed URL (HMAC-SHA256) to frame the app in another site: its visitors read with these "
            "attribute values (row rules) and variables (fixed), until expires_in seconds from now (60 to "
            "2592000, default 86400) -> {url, expires_at}. Tampered: 404; expired: 403; unpublishing the app "
            "ends it. Studio/admin, where allow_public_apps is true. Audited as app.embed.create",
            "apps:share_public",
            ok="201",
            body={
                "type": "object",
                "properties": {
                    "attributes": {"type": "object", "additionalProperties": {"type": "array", "items": STR}},
                    "variables": OBJ,
                    "expires_in": INT,
                    # Default: the sources the current snapshot names (signed: later versions add none).
                    "sources": {"type": "array", "maxItems": 200, "items": STR},
                },
                "additionalProperties": False,
            },
        ),
    },
    "/api/v1/apps/{app_id}/favourite": {
        "put": _op("Mark the app as one of the caller's favourites (idempotent)", "apps:read"),
        "delete": _op("Unmark it (idempotent)", "apps:read"),
    },
    "/api/v1/apps/{app_id}/sharing": {
        "get": _op(
            "Who the app is shared with: visibility, users [id, email], groups [id, name]", "apps:share"
        ),
        "put": _op(
            "Replace visibility and share lists. restricted: only the listed people and members of the "
            "listed viewer groups (plus admins and the publisher) may open it. public: studio/admin only, "
            "and only if the organization setting allow_public_apps is true (else 403); the public link "
            "itself is made with POST apps/{app_id}/public-link. People or groups not of the organization "
            "are a 400 naming them",
            "apps:share",
            body={
                **_obj(
                    ["visibility"],
                    visibility={"type": "string", "enum": ["org", "restricted", "public"]},
                    users={"type": "array", "maxItems": 1000, "items": {"oneOf": [INT, STR]}},
                    groups={"type": "array", "maxItems": 1000, "items": INT},
                ),
                "additionalProperties": False,
            },
        ),
    },
    "/api/v1/jobs": {
        "get": _op("Jobs of the caller's organization", "jobs:list"),
        "post": _op(
            "Create a job. kind: report (default; app PDF by mail), notebook, burst, data_email, alert, "
            "load (studio), chain, warmup; config: the kind's settings (docs/SCHEDULER.md); cron null: "
            "no schedule",
            "jobs:create",
            ok="201",
            body=_obj(
                ["name"],
                name=STR,
                kind=STR,
                app_id=INT,
                config={"type": "object"},
                cron={"type": ["string", "null"]},
                schedule={
                    "type": "object",
                    "description": "Instead of cron: {preset: hourly|nightly|weekly|monthly, minute, at "
                    "(HH:MM), weekday (mon..sun), day (1-28)}",
                },
                timezone=STR,
                misfire_grace_seconds=INT,
                timeout_seconds={"type": ["integer", "null"]},
                max_retries=INT,
                retry_backoff_seconds=INT,
                after_job_id={"type": ["integer", "null"]},
                parameters={"type": "object"},
                recipients={"type": "array", "items": STR},
            ),
        ),
    },
    "/api/v1/jobs/{job_id}": {
        "get": _op("One job", "jobs:read"),
        "patch": _op(
            "Change a job: only the fields sent, each checked as on create, all before any change (400 "
            "naming the field; unknown fields, kind and owner are refused). A new cron/schedule or "
            "timezone, or enabling, sets next_run_at from now (no backlog of fires missed while disabled)",
            "jobs:update",
            body={
                "type": "object",
                "properties": {
                    "enabled": {"type": "boolean"},
                    "name": STR,
                    "cron": {"type": ["string", "null"]},
                    "schedule": OBJ,
                    "timezone": STR,
                    "recipients": {"type": "array", "items": STR},
                    "parameters": OBJ,
                    "config": OBJ,
                    "app_id": INT,
                    "after_job_id": {"type": ["integer", "null"]},
                    "misfire_grace_seconds": INT,
                    "timeout_seconds": {"type": ["integer", "null"]},
                    "max_retries": INT,
                    "retry_backoff_seconds": INT,
                },
                "additionalProperties": False,
            },
        ),
        "delete": _op("Delete a job and its runs", "jobs:delete", ok="204"),
    },
    "/api/v1/jobs/{job_id}/webhook": {
        "post": _op(
            "Make the job's webhook URL, or a new one (the old one answers 404 from then on): 201 with its "
            "url, shown this once",
            "jobs:update",
            ok="201",
        ),
        "delete": _op("Remove the job's webhook: its URL answers 404 from now on", "jobs:update", ok="204"),
    },
    "/api/v1/hooks/jobs/{secret}": {
        "post": _op(
            "Start a run of a job through its webhook URL (the credential; no other auth). Optional body: "
            "a JSON object (at most 16 KB) of parameters, scalars or lists of scalars, merged over the "
            "job's. 202 {run_id, coalesced}: a webhook run still queued takes the call. Unknown or removed: "
            "404; job disabled: 409",
            None,
            ok="202",
        )
    },
    "/api/v1/jobs/{job_id}/runs": {
        "get": _op(
            "The job's latest runs, newest first (limit: 1-1000, default 50)",
            "jobs:read",
            parameters=[{"name": "limit", "in": "query", "schema": INT}],
        ),
        "post": _op("Run the job now", "jobs:run", ok="202"),
    },
    "/api/v1/jobs/{job_id}/runs/{run_id}": {
        "get": _op("One run: history fields, mail per recipient, output files, a chain's steps", "jobs:read"),
    },
    "/api/v1/jobs/{job_id}/runs/{run_id}/outputs/{output}": {
        "get": _op("Download one output file of a run", "jobs:read"),
    },
    # carnet.state: only a job run's own token, for that run's job (carnet/service/api/job_state.py).
    "/api/v1/job-state/{key}": {
        "get": _op("A job's state value (job run tokens only): {key, value, updated_at}", "jobs:state"),
        "put": _op(
            "Set a job's state value (job run tokens only): key 1-200 of A-Za-z0-9_.-, value JSON <= 64 KB "
            "(413), at most 100 keys per job",
            "jobs:state",
            body=_obj(["value"], value={}),
        ),
        "delete": _op("Remove a job's state value (job run tokens only)", "jobs:state", ok="204"),
    },
    "/api/v1/users": {
        "get": _op("People of the organization", "users:manage"),
        "post": _op(
            "Create a person with a one-time password (returned once; changed at first sign-in), or with "
            '"invite": true an invitation link instead (invitation_url, invitation_expires_at, '
            "invitation_sent: whether it was mailed)",
            "users:manage",
            ok="201",
            body=_obj(["email", "role"], email=STR, role=STR, display_name=STR, invite={"type": "boolean"}),
        ),
    },
    "/api/v1/users/{user_id}": {
        "get": _op("One person", "users:manage"),
        "patch": _op(
            "Change role, display name or is_active (other fields are refused); lowering a role or "
            "disabling ends the person's sessions and tokens at once",
            "users:manage",
            body={
                "type": "object",
                "properties": {"role": STR, "display_name": STR, "is_active": {"type": "boolean"}},
                "additionalProperties": False,
            },
        ),
        "delete": _op("Delete the person (their sessions, tokens and keys die)", "users:manage", ok="204"),
    },
    "/api/v1/users/{user_id}/password": {
        "post": _op("Give the person a new one-time password (their sessions end)", "users:manage"),
    },
    "/api/v1/users/{user_id}/invitation": {
        "post": _op(
            "Issue a new invitation link (the previous one dies at once); 200 with invitation_url, "
            "invitation_expires_at and invitation_sent. 409 if the person is disabled",
            "users:manage",
        ),
    },
    "/api/v1/users/{user_id}/attributes": {
        "get": _op("A member's row-security attributes {name: [values]}", "users:manage"),
        "put": _op(
            "Replace a member's row-security attributes: {attributes: {name: [values]}} (names are "
            "identifiers; values 1-200 characters, at most 500 per attribute)",
            "users:manage",
            body=_obj(["attributes"], attributes=OBJ),
        ),
    },
    "/api/v1/user-attributes/reload": {
        "post": _op(
            "Every member's attributes from a warehouse table: first column the login email, one column per "
            "attribute (rows of one email add up; a member the table does not list loses those attributes; "
            "emails of nobody here are listed in unknown_emails, not created)",
            "users:manage",
            body=_obj(["table"], table=STR),
        ),
    },
    "/api/v1/sources/{name}/row-rules": {
        "get": _op("The source's row rules [{column, attribute}]", "sources:manage"),
        "put": _op(
            "Replace the source's row rules: viewers and analysts then see only rows whose column is one of "
            "their values of the attribute (none without it); the source gets a new version",
            "sources:manage",
            body=_obj(
                ["rules"],
                rules={"type": "array", "items": _obj(["column", "attribute"], column=STR, attribute=STR)},
            ),
        ),
    },
    "/api/v1/groups": {
        "get": _op("Viewer groups of the organization, with their members' emails", "groups:manage"),
        "post": _op(
            "Create a viewer group. 409 if the name (or a look-alike of it, e.g. Cyrillic letters) is taken",
            "groups:manage",
            ok="201",
            body={**_obj(["name"], name={**STR, "maxLength": 100}), "additionalProperties": False},
        ),
    },
    "/api/v1/groups/{group_id}": {
        "get": _op("One viewer group", "groups:manage"),
        "patch": _op(
            "Rename a viewer group (other fields are refused)",
            "groups:manage",
            body={"type": "object", "properties": {"name": STR}, "additionalProperties": False},
        ),
        "delete": _op("Delete a viewer group", "groups:manage", ok="204"),
    },
    "/api/v1/groups/{group_id}/members": {
        "put": _op(
            "Set the group's members (emails of people of the organization; others are a 400 naming them)",
            "groups:manage",
            body={
                **_obj(["users"], users={"type": "array", "items": STR}),
                "additionalProperties": False,
            },
        ),
    },
    "/api/v1/org": {
        "get": _op("The caller's organization: id, slug, name and settings (any member)", "org:read"),
        "patch": _op(
            "Change organization settings (admins): name (1-200 characters), timezone (IANA, default of "
            "new jobs), allow_public_apps (bool), embed_origins (origins that may frame embed URLs, "
            "space-separated; empty: any), api_key_max_days (0-3650, 0 = no limit), invitation_days "
            "(1-90), primary_color (#RRGGBB or empty), custom_css (see the README's branding rules). "
            "Unknown keys, id/slug/org_id and invalid values are a 400 naming the field; nothing "
            "is applied then. Audited as org.settings.change with each key's from/to",
            "org:manage",
            body={
                "type": "object",
                "properties": {
                    "name": {**STR, "minLength": 1, "maxLength": 200},
                    "timezone": STR,
                    "allow_public_apps": {"type": "boolean"},
                    # Origins that may frame embed URLs, space-separated; empty: any site.
                    "embed_origins": STR,
                    "api_key_max_days": {**INT, "minimum": 0, "maximum": 3650},
                    "invitation_days": {**INT, "minimum": 1, "maximum": 90},
                    "primary_color": {**STR, "pattern": "^(#[0-9a-fA-F]{6})?$"},
                    "custom_css": {**STR, "maxLength": 20480},
                },
                "additionalProperties": False,
            },
        ),
    },
    "/api/v1/org/logo": {
        "get": _op(
            "The organization's logo (image/png or image/jpeg, nosniff); 404 when it has none", "org:read"
        ),
        "put": _op(
            "Set the organization's logo (admins): the PNG or JPEG file as the raw body, at most 512 KB "
            "(413 above); the type is read from the file's first bytes; SVG and anything else is a 400. "
            "Audited as org.logo.change",
            "org:manage",
            requestBody={
                "required": True,
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            },
        ),
        "delete": _op(
            "Remove the organization's logo (admins); audited as org.logo.remove", "org:manage", ok="204"
        ),
    },
    "/api/v1/org/mail": {
        "get": _op(
            "The organization's own SMTP settings (admins, people only: not API keys): {configured, host, "
            "port, security, username, from_address, password_set}; never the password. Not configured: "
            "its mail goes the platform's way (CARNET_SMTP_*, else the local outbox folder)",
            "org:mail",
        ),
        "put": _op(
            "Set the organization's SMTP settings (admins, people only), the whole set: host (name or IP), "
            "port (1-65535; default 25/587/465 by security), security (none, starttls or ssl; a login needs "
            "starttls or ssl), username and password (optional; the password is stored encrypted and kept "
            'when omitted, removed with null or ""), from_address (the From of the org\'s mail). A bad '
            "or unknown field is a 400 naming it; nothing is stored then. Audited as org.mail.change "
            "(the password only as changed/removed)",
            "org:mail",
            body=_obj(
                ["host", "security", "from_address"],
                host=STR,
                port={"type": "integer", "minimum": 1, "maximum": 65535},
                security={"type": "string", "enum": ["none", "starttls", "ssl"]},
                username=STR,
                password={"type": ["string", "null"], "writeOnly": True},
                from_address={**STR, "format": "email"},
            ),
        ),
        "delete": _op(
            "Forget the organization's SMTP settings (its mail goes the platform's way again); audited as "
            "org.mail.remove",
            "org:mail",
            ok="204",
        ),
    },
    "/api/v1/org/mail/test": {
        "post": _with_response(
            "502",
            MAIL_SERVER_ERROR,
            _op(
                "Send a test mail to {to} the way the organization's mail goes (its own settings, else "
                "the platform's): {delivered, to, settings: organization|platform, from}. A server that "
                "cannot be reached, fails TLS (certificates are verified) or refuses the login or the "
                "message is a 502 saying why, with the server's reply. Admins only (people): it connects "
                "to the host they set. Audited as org.mail.test",
                "org:mail",
                body=_obj(["to"], to={**STR, "format": "email"}),
            ),
        ),
    },
    "/api/v1/me/password": {
        "post": _op(
            "Change one's own password (signed in as oneself, not with a token)",
            "me:update",
            ok="204",
            body=_obj(["current_password", "new_password"], current_password=STR, new_password=STR),
        ),
    },
    "/api/v1/audit": {
        "get": _op(
            "The organization's audit log, newest first (admins only)",
            "audit:read",
            parameters=AUDIT_FILTERS
            + [
                {"name": "limit", "in": "query", "schema": {**INT, "minimum": 1, "maximum": 1000}},
                {"name": "offset", "in": "query", "schema": {**INT, "minimum": 0}},
            ],
        )
    },
    "/api/v1/audit/export": {
        "get": _op(
            "The audit log as a streamed download: CSV with a header row (text/csv) or JSON lines "
            "(application/x-ndjson); same filters as /audit, no limit unless given",
            "audit:read",
            parameters=AUDIT_FILTERS
            + [
                {"name": "format", "in": "query", "schema": {"enum": ["csv", "jsonl"], "default": "csv"}},
                {"name": "limit", "in": "query", "schema": {**INT, "minimum": 1, "maximum": 1000}},
                {"name": "offset", "in": "query", "schema": {**INT, "minimum": 0}},
            ],
        )
    },
    "/api/v1/keys": {
        "get": _op(
            "The organization's API keys (admins; never their secrets). Key management is for people: "
            "an API key calling this gets 403",
            "keys:manage",
        ),
        "post": _op(
            "Create an API key; its clear text is returned once, as `key`. Send it as "
            "`Authorization: Bearer <key>` or `X-Api-Key: <key>`; it acts as its creator with role "
            "min(role, the creator's current role). 409 if the name is taken",
            "keys:manage",
            ok="201",
            body=_obj(
                ["name", "role"],
                name=STR,
                role={"type": "string", "enum": ["viewer", "analyst", "studio", "admin"]},
                expires_at={"type": "string", "format": "date-time"},
                expires_in_days=INT,
            ),
        ),
    },
    "/api/v1/keys/{key_id}": {
        "delete": _op("Revoke an API key (refused at once from then on)", "keys:manage", ok="204"),
    },
    "/api/v1/keys/{key_id}/rotate": {
        "post": _op(
            "New secret for an API key (returned once, as `key`); the old one is refused at once. "
            "Optionally renew it with expires_at or expires_in_days",
            "keys:manage",
            body={
                "type": "object",
                "properties": {
                    "expires_at": {"type": "string", "format": "date-time"},
                    "expires_in_days": INT,
                },
            },
        ),
    },
    "/api/v1/internal/visitor-sessions": {
        "post": _op(
            "Carnet Viewer only: turn a public link, embed token or the scheduler's print token into the "
            "page's kernel token (404 unknown, revoked, tampered or unpublished; 403 expired embed/print)",
            None,
            ok="201",
            body={"type": "object", "properties": {"link": STR, "embed": STR, "print": STR}},
            **{"x-carnet-service-only": ["carnet-viewer"]},
        )
    },
    "/api/v1/internal/viewer-sessions": {
        "post": _op(
            "Carnet Viewer only: check that a user may open an app and mint their kernel token",
            None,
            ok="201",
            # ttl_seconds: a shorter life for the token (the Viewer's pre-rendered pages, render_pool.py).
            body=_obj(["user", "app_id"], user=STR, app_id=INT, as_user=STR, ttl_seconds=INT),
            **{"x-carnet-service-only": ["carnet-viewer"]},
        )
    },
}


def openapi_document(service_prefix: str) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Carnet API", "version": carnet.__version__},
        "servers": [{"url": service_prefix.rstrip("/")}],
        "paths": PATHS,
        "components": {
            "schemas": {"Error": _obj(["status", "message"], status=INT, message=STR)},
            "securitySchemes": {
                "hub": {"type": "apiKey", "in": "cookie", "name": "jupyterhub-services"},
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Hub API token, Carnet token or org API key (cak_...)",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
        "security": [{"hub": []}, {"token": []}, {"apiKey": []}],
    }

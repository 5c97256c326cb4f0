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


STR = {"type": "string"}
INT = {"type": "integer"}
AUDIT_FILTERS = [
    {"name": "action", "in": "query", "schema": STR, "description": "prefix, e.g. login."},
    {"name": "actor", "in": "query", "schema": STR, "description": "exact email"},
    {"name": "since", "in": "query", "schema": {**STR, "format": "date-time"}, "description": "inclusive"},
    {"name": "until", "in": "query", "schema": {**STR, "format": "date-time"}, "description": "exclusive"},
]

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
                ["name", "kind", "options"], name=STR, kind=STR, description=STR, options={"type": "object"}
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
    "/api/v1/apps": {
        "get": _op("Apps the caller may open", "apps:list"),
        "post": _op(
            "Publish a notebook as an app (creates it or adds a version)",
            "apps:publish",
            ok="201",
            body=_obj(
                ["slug", "title", "notebook"],
                slug=STR,
                title=STR,
                description=STR,
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
    },
    "/api/v1/apps/{app_id}/sharing": {
        "get": _op(
            "Who the app is shared with: visibility, users [id, email], groups [id, name]", "apps:share"
        ),
        "put": _op(
            "Replace visibility and share lists. restricted: only the listed people and members of the "
            "listed viewer groups (plus admins and the publisher) may open it. public: studio/admin only, "
            "and only if the organization setting allow_public_apps is true (else 403); the public link "
            "itself comes with a later Viewer release. People or groups not of the organization are a 400 "
            "naming them",
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
            "Create a scheduled PDF report job",
            "jobs:create",
            ok="201",
            body=_obj(
                ["name", "app_id", "cron", "recipients"],
                name=STR,
                app_id=INT,
                cron=STR,
                timezone=STR,
                parameters={"type": "object"},
                recipients={"type": "array", "items": STR},
            ),
        ),
    },
    "/api/v1/jobs/{job_id}": {
        "get": _op("One job", "jobs:read"),
        "delete": _op("Delete a job and its runs", "jobs:delete", ok="204"),
    },
    "/api/v1/jobs/{job_id}/runs": {
        "get": _op("The job's latest runs", "jobs:read"),
        "post": _op("Run the job now", "jobs:run", ok="202"),
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
            "new jobs), allow_public_apps (bool), api_key_max_days (0-3650, 0 = no limit), invitation_days "
            "(1-90). Unknown keys, id/slug/org_id and invalid values are a 400 naming the field; nothing "
            "is applied then. Audited as org.settings.change with each key's from/to",
            "org:manage",
            body={
                "type": "object",
                "properties": {
                    "name": {**STR, "minLength": 1, "maxLength": 200},
                    "timezone": STR,
                    "allow_public_apps": {"type": "boolean"},
                    "api_key_max_days": {**INT, "minimum": 0, "maximum": 3650},
                    "invitation_days": {**INT, "minimum": 1, "maximum": 90},
                },
                "additionalProperties": False,
            },
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
    "/api/v1/internal/viewer-sessions": {
        "post": _op(
            "Carnet Viewer only: check that a user may open an app and mint their kernel token",
            None,
            ok="201",
            body=_obj(["user", "app_id"], user=STR, app_id=INT),
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

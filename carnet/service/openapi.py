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
    "/api/v1/sources/{name}": {"get": _op("One source, with its columns", "sources:list")},
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
    "/api/v1/apps/{app_id}": {"get": _op("One app", "apps:read")},
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
                "token": {"type": "http", "scheme": "bearer", "description": "Hub API token or Carnet token"},
            },
        },
        "security": [{"hub": []}, {"token": []}],
    }

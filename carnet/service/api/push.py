"""Push endpoints: a per-table secret URL through which an outside system sends JSON rows (revocable).

``POST/GET .../warehouse/tables/<table>/push-endpoints`` and ``DELETE .../push-endpoints/<id>`` are studio's
(``warehouse:load``). The URL, ``<public url>/services/carnet/api/v1/push/<prefix>_<secret>``, is shown once:
only a SHA-256 of the secret is stored (as for Carnet tokens). ``POST /api/v1/push/<prefix>_<secret>`` takes
no other credential — the URL is one — so an unknown, malformed or revoked URL answers one and the same 404.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets

from sqlalchemy import select
from tornado import web

from carnet import loads
from carnet.audit import client_address
from carnet.audit import record as audit_record
from carnet.db.models import PushEndpoint, utcnow
from carnet.errors import NotFound, UploadTooLarge, ValidationError
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.streamed_body import StreamedBodyMixin
from carnet.service.api.warehouse import (
    LOAD,
    TABLE,
    after_load,
    check_mode,
    forget_all,
    key_columns,
    result_json,
    table_info,
    table_name,
)
from carnet.tokens import hash_secret

PUSH_MODES = ("append", "upsert")
NO_SUCH_PUSH = "No such push endpoint"


def endpoint_json(endpoint: PushEndpoint) -> dict:
    return {
        "id": endpoint.id,
        "name": endpoint.name,
        "table": endpoint.table_name,
        "mode": endpoint.mode,
        "key": list(endpoint.key or []),
        "created_at": endpoint.created_at.isoformat(),
        "revoked_at": endpoint.revoked_at.isoformat() if endpoint.revoked_at else None,
    }


class PushEndpointsHandler(BaseHandler):
    @authorized(LOAD)
    async def get(self, table):
        table = table_name(table)
        org_id = self.principal().org_id
        with self.db() as session:
            endpoints = session.scalars(
                select(PushEndpoint)
                .where(PushEndpoint.org_id == org_id, PushEndpoint.table_name == table)
                .order_by(PushEndpoint.id)
            ).all()
            # A table not pushed to yet has its live endpoints listed; otherwise an unknown table is a 404.
            if all(e.revoked_at is not None for e in endpoints):
                await asyncio.to_thread(table_info, self.settings_obj, org_id, table)
            self.write_json({"table": table, "push_endpoints": [endpoint_json(e) for e in endpoints]})

    @authorized(LOAD)
    async def post(self, table):
        table = table_name(table)
        principal = self.principal()
        body = self.get_json_body()
        unknown = sorted(set(body) - {"name", "mode", "key"})
        if unknown:
            raise ValidationError(f"Unknown field {unknown[0]!r}", field=unknown[0])
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > 200:
            raise ValidationError("name must be text of at most 200 characters", field="name")
        key = key_columns(body.get("key") or [])
        mode = check_mode(body.get("mode", "append"), key, PUSH_MODES)
        # The table need not exist yet: the first push creates it (append and upsert into a missing table
        # create it in the engine), with the columns and types of those rows; the key is checked then.
        prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self.db() as session:
            endpoint = PushEndpoint(
                org_id=principal.org_id,
                table_name=table,
                name=name,
                prefix=prefix,
                secret_hash=hash_secret(secret),
                mode=mode,
                key=key,
                created_by=principal.user_id,
            )
            session.add(endpoint)
            session.flush()
            # The endpoint's id and settings only: the secret is in the answer, never in the log.
            self.audit(
                session, "push_endpoint.create", f"table/{table}", id=endpoint.id, mode=mode, name=name
            )
            base = self.settings_obj.public_url.rstrip("/") + self.settings["service_prefix"].rstrip("/")
            url = f"{base}/{API_PREFIX}push/{prefix}_{secret}"
            self.write_json({**endpoint_json(endpoint), "url": url}, status=201)


class PushEndpointHandler(BaseHandler):
    @authorized(LOAD)
    def delete(self, table, endpoint_id):
        table = table_name(table)
        principal = self.principal()
        with self.db() as session:
            endpoint = None
            if endpoint_id.isdigit():
                endpoint = session.scalar(
                    select(PushEndpoint).where(
                        PushEndpoint.id == int(endpoint_id),
                        PushEndpoint.org_id == principal.org_id,
                        PushEndpoint.table_name == table,
                        PushEndpoint.revoked_at.is_(None),
                    )
                )
            if endpoint is None:
                raise NotFound(NO_SUCH_PUSH)
            endpoint.revoked_at = utcnow()
            self.audit(session, "push_endpoint.revoke", f"table/{table}", id=endpoint.id)
        self.set_status(204)


def parse_rows(body: bytes, max_rows: int) -> list[dict]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"Request body is not valid JSON: {exc}", field="body") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValidationError('Send {"rows": [{...}, ...]} or a JSON list of objects', field="rows")
    if not rows:
        raise ValidationError("No rows to load", field="rows")
    if len(rows) > max_rows:
        raise UploadTooLarge(f"At most {max_rows} rows per push", limit=max_rows)
    return rows


@web.stream_request_body
class PushHandler(StreamedBodyMixin, BaseHandler):
    """The secret URL itself is the credential: no person, key or token is looked at (nor needed).

    The body streams to a file under the endpoint's organization, capped at ``push_max_bytes``: a declared
    Content-Length over it is refused in ``prepare``, before Tornado reads any of the body, and a body
    without one (chunked) is cut off while it arrives (streamed_body.py)."""

    def check_xsrf_cookie(self):
        return None  # no cookie is used here, so none can be forged

    def body_limit(self) -> int:
        return self.settings_obj.push_max_bytes

    def too_large(self) -> UploadTooLarge:
        cap = self.body_limit()
        return UploadTooLarge(f"A push body may hold at most {cap} bytes", limit=cap)

    def prepare_body(self):
        # An unknown URL is a 404 whatever its body; only then is the body's size looked at.
        with self.db() as session:
            endpoint = self.find(session, self.path_kwargs["token"])
            self.endpoint = {
                "org_id": endpoint.org_id,
                "table": endpoint.table_name,
                "name": endpoint.name,
                "mode": endpoint.mode,
                "key": list(endpoint.key or []),
                "id": endpoint.id,
            }
        self.start_body(prefix="push-", org_id=self.endpoint["org_id"])

    def find(self, session, token: str) -> PushEndpoint:
        prefix, _, secret = token.partition("_")
        endpoint = (
            session.scalar(select(PushEndpoint).where(PushEndpoint.prefix == prefix)) if secret else None
        )
        if (
            endpoint is None
            or endpoint.revoked_at is not None
            or not hmac.compare_digest(endpoint.secret_hash, hash_secret(secret))
        ):
            raise NotFound(NO_SUCH_PUSH)  # unknown, wrong secret or revoked: the same answer
        return endpoint

    async def post(self, token):
        path = self.finish_body()  # first: a refused URL (404) is answered here, its body drained
        settings = self.settings_obj
        endpoint = self.endpoint
        org_id, table, name = endpoint["org_id"], endpoint["table"], endpoint["name"]
        mode, key, endpoint_id = endpoint["mode"], endpoint["key"], endpoint["id"]
        try:
            body = path.read_bytes()  # at most push_max_bytes: the cap was enforced while it streamed
        finally:
            self._cleanup()
        rows = parse_rows(body, settings.push_max_rows)
        # The endpoint's key was not checked against a table that did not exist yet: check it on the rows.
        names = {str(name).lower() for row in rows for name in row}
        missing = [k for k in key if k.lower() not in names]
        if missing:
            raise ValidationError(f"Key column {missing[0]!r} is missing from the rows", field=missing[0])
        actor = f"push {name}".strip()
        result = await asyncio.to_thread(
            loads.load_table,
            settings,
            org_id,
            table,
            rows_table(rows),
            mode=mode,
            key=key or None,
            actor=actor,
            origin="push",
        )
        with self.db() as session:
            bumped = after_load(session, settings, org_id, table)
            audit_record(
                session,
                org_id=org_id,
                actor_id=None,
                actor=actor,
                action="warehouse.load",
                target=f"table/{table}",
                details={"table": table, "mode": mode, "rows": result.rows_in, "push_endpoint": endpoint_id},
                remote_addr=client_address(self.request, settings.trusted_proxy_hops),
            )
            self.write_json(result_json(result))
        forget_all(settings, org_id, bumped)


def rows_table(rows: list[dict]):
    """JSON rows as an Arrow table: columns in first-seen order, a missing value is null, each column's type
    inferred (the engine then checks it against the table's)."""
    import pyarrow as pa

    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    try:
        return pa.table({name: [row.get(name) for row in rows] for name in names})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValidationError(f"The rows do not form a table: {exc}", field="rows") from None


default_handlers = [
    (API_PREFIX + TABLE + r"/push-endpoints", PushEndpointsHandler),
    (API_PREFIX + TABLE + r"/push-endpoints/(?P<endpoint_id>[^/]+)", PushEndpointHandler),
    (API_PREFIX + r"push/(?P<token>[^/]+)", PushHandler),
]

# Routes whose credential is the URL itself (see carnet.service.api.meta.PUBLIC_HANDLERS).
PUBLIC_HANDLERS = (PushHandler,)

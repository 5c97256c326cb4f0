"""Sharing an app beyond the organization: public links and signed embed URLs.

- A **public link** (``app_public_links``, one per app, studio/admin, only if the org setting
  ``allow_public_apps`` is true): ``<viewer>/public/<prefix>_<secret>``; only a SHA-256 of the secret is kept.
  Rotating replaces it, revoking deletes the row: the next request with the old URL is a 404.
- A **signed embed URL** (studio/admin): ``<viewer>/embed/<payload>.<signature>``, HMAC-SHA256 (key
  ``secrets/embed_signing_key``) over the app, its org, the attribute values and variables the visitor reads
  with, and an expiry (at most ``MAX_EMBED_SECONDS``). It cannot be revoked one by one: unpublishing the app
  (or replacing the key file) ends every embed URL of it.

Visitors are anonymous. Their kernel gets a token (``TokenKind.public_app``/``embed``) bound to no person:
restricted (row rules apply; a public visitor has no attributes, so a ruled source shows no rows), in the
app's org, allowed to list and read only the app's sources (``AppScope``), with the embed's variables fixed.
Such a token dies with its link (revoked or rotated) or its app (unpublished).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, select

from carnet.db.models import App, AppPublicLink, DataSource, Organization, Role, Token, TokenKind
from carnet.errors import NotFound, PermissionDenied, ValidationError
from carnet.permissions import AppScope, Principal
from carnet.publishing import current_notebook_path
from carnet.query.service import check_variables
from carnet.row_security import check_attributes
from carnet.secret_files import ensure_secret
from carnet.sharing import PUBLIC_SETTING
from carnet.tokens import hash_secret, mint_token

EMBED_KEY_FILE = "embed_signing_key"
MAX_EMBED_SECONDS = 30 * 24 * 3600
DEFAULT_EMBED_SECONDS = 24 * 3600
MAX_SOURCES = 200
VISITOR_NAME = {
    TokenKind.public_app: "public link visitor",
    TokenKind.embed: "embed visitor",
    TokenKind.print_page: "report printer",
}
_LINK = re.compile(r"^([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
# sources["x"], sources['x'], sources.get("x"), carnet.sources["x"], src.sources.get('x')...
_SOURCE_USE = re.compile(r"""\bsources\s*(?:\[\s*|\.get\(\s*)(?P<q>["'])(?P<name>[^"'\n]{1,200})(?P=q)""")
# carnet.dash: Dashboard(..., source="x"), a block's source="x", dash.Query.of("x", ...).
_DASH_SOURCE = re.compile(r"""\b(?:source\s*=\s*|Query\.of\(\s*)(?P<q>["'])(?P<name>[^"'\n]{1,200})(?P=q)""")
# {name} placeholders of carnet.sources.sql("..."): only inside that call's first string.
_SQL_CALL = re.compile(r"""\bsources\.sql\(\s*[rfbu]*(?P<q>\"\"\"|'''|"|')(?P<sql>.*?)(?P=q)""", re.S)
_PLACEHOLDER = re.compile(r"\{([^{}\n]{1,200})\}")


# -- which sources an app reads ----------------------------------------------------------------------------
def detect_sources(notebook_text: str) -> list[str]:
    """Source names the notebook's code cells name literally (``sources["x"]``, ``sources.get("x")``,
    ``{x}`` in ``sources.sql("...")``, carnet.dash's ``source="x"`` and ``Query.of("x")``). Names built at
    run time are not found: pass them explicitly."""
    try:
        cells = json.loads(notebook_text).get("cells", [])
    except ValueError:
        return []
    found: list[str] = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        code = cell.get("source", "")
        code = "".join(code) if isinstance(code, list) else str(code)
        names = [m.group("name") for pattern in (_SOURCE_USE, _DASH_SOURCE) for m in pattern.finditer(code)]
        for call in _SQL_CALL.finditer(code):
            names += _PLACEHOLDER.findall(call.group("sql"))
        found += [n.strip() for n in names if n.strip() and n.strip() not in found]
    return list(dict.fromkeys(found))


def app_sources(session, settings, app: App, requested=None) -> list[str]:
    """The sources the app's visitors may read: ``requested`` (checked: sources of the app's org) or the
    ones detected in the current snapshot that exist in the org."""
    existing = set(session.scalars(select(DataSource.name).where(DataSource.org_id == app.org_id)))
    if requested is None:
        text = current_notebook_path(settings, app).read_text(encoding="utf-8")
        return [name for name in detect_sources(text) if name in existing]
    if not isinstance(requested, list) or not all(isinstance(n, str) for n in requested):
        raise ValidationError("sources must be a list of source names", field="sources")
    if len(requested) > MAX_SOURCES:
        raise ValidationError(f"At most {MAX_SOURCES} sources", field="sources")
    unknown = [n for n in requested if n not in existing]
    if unknown:
        raise ValidationError(f"No such sources: {', '.join(unknown[:20])}", field="sources")
    return list(dict.fromkeys(requested))


# -- public links ------------------------------------------------------------------------------------------
def public_apps_allowed(session, org_id: int) -> bool:
    org = session.get(Organization, org_id)
    return org is not None and bool((org.settings or {}).get(PUBLIC_SETTING, False))


def require_public_apps(session, principal: Principal, app: App) -> None:
    """Studio and admins only, and only where the organization allows public apps."""
    if not principal.can("apps:share_public"):
        raise PermissionDenied("Only studio users and admins may share an app outside the organization")
    if not public_apps_allowed(session, app.org_id):
        raise PermissionDenied(
            f"Public apps are turned off for this organization (organization setting {PUBLIC_SETTING})"
        )


def public_link_of(session, app_id: int) -> AppPublicLink | None:
    return session.scalar(select(AppPublicLink).where(AppPublicLink.app_id == app_id))


def public_app_ids(session, app_ids) -> set[int]:
    ids = list(app_ids)
    if not ids:
        return set()
    return set(session.scalars(select(AppPublicLink.app_id).where(AppPublicLink.app_id.in_(ids))))


def create_public_link(session, app: App, user_id: int, sources: list[str]) -> tuple[AppPublicLink, str]:
    """A new link for ``app`` (replacing any older one, whose URL dies); returns it and its clear secret."""
    old = public_link_of(session, app.id)
    if old is not None:
        revoke_public_link(session, app)
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    link = AppPublicLink(
        app_id=app.id,
        org_id=app.org_id,
        prefix=prefix,
        secret_hash=hash_secret(secret),
        sources=sources,
        created_by=user_id,
    )
    session.add(link)
    session.flush()
    return link, f"{prefix}_{secret}"


def revoke_public_link(session, app: App) -> bool:
    """Delete the app's link and end its visitors' kernel tokens. False when there was none."""
    link = public_link_of(session, app.id)
    if link is None:
        return False
    session.execute(delete(Token).where(Token.app_id == app.id, Token.kind == TokenKind.public_app))
    session.delete(link)
    session.flush()
    return True


def find_public_link(session, text: str) -> tuple[AppPublicLink, App]:
    """The live link of ``text`` and its published app, or NotFound (unknown, revoked, unpublished)."""
    match = _LINK.fullmatch(text or "")
    link = match and session.scalar(select(AppPublicLink).where(AppPublicLink.prefix == match.group(1)))
    if not link or not hmac.compare_digest(link.secret_hash, hash_secret(match.group(2))):
        raise NotFound("No such app")
    app = session.get(App, link.app_id)
    if app is None or app.current_version < 1 or app.org_id != link.org_id:
        raise NotFound("No such app")
    if not public_apps_allowed(session, app.org_id):  # suspended while the org turns public apps off
        raise NotFound("No such app")
    return link, app


def public_link_json(link: AppPublicLink, creator_email: str | None, url: str | None = None) -> dict:
    answer = {
        "app_id": link.app_id,
        "public": True,
        "created_at": link.created_at,
        "created_by": creator_email,
        "sources": list(link.sources or []),
    }
    if url is not None:
        answer["url"] = url  # shown once, when made: only its hash is kept
    return answer


# -- signed embed URLs -------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def embed_key(settings) -> bytes:
    ensure_secret(settings.data_dir, EMBED_KEY_FILE, 32)
    return (Path(settings.data_dir) / "secrets" / EMBED_KEY_FILE).read_text().strip().encode()


def check_embed_request(body: dict) -> tuple[dict, dict, int]:
    """The attributes, variables and lifetime of an embed request (its ``sources``: see ``app_sources``)."""
    unknown = sorted(set(body) - {"attributes", "variables", "expires_in", "sources"})
    if unknown:
        raise ValidationError(f"Unknown field {unknown[0]!r}", field=unknown[0])
    attributes = check_attributes(body.get("attributes") or {})
    variables = check_variables(body.get("variables") or {})
    expires_in = body.get("expires_in", DEFAULT_EMBED_SECONDS)
    if (
        not isinstance(expires_in, int)
        or isinstance(expires_in, bool)
        or not 60 <= expires_in <= MAX_EMBED_SECONDS
    ):
        raise ValidationError(
            f"expires_in must be a whole number of seconds, 60 to {MAX_EMBED_SECONDS}", field="expires_in"
        )
    return attributes, variables, expires_in


def sign_embed(
    settings, app: App, attributes: dict, variables: dict, expires_in: int, sources=()
) -> tuple[str, datetime]:
    """The embed token (``<payload>.<signature>``) and when it expires. The sources are signed too: a new
    version of the app naming other sources does not widen an embed URL made before (nor a public link)."""
    expires = int(time.time()) + expires_in
    payload = {
        "app": app.id,
        "org": app.org_id,
        "attr": attributes,
        "var": variables,
        "src": list(sources),
        "exp": expires,
    }
    return signed(settings, payload), datetime.fromtimestamp(expires, UTC)


def signed(settings, payload: dict) -> str:
    """``<payload>.<signature>``: HMAC-SHA256 with the embed key (also used by carnet.print_pages)."""
    body = _b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    signature = _b64(hmac.new(embed_key(settings), body.encode(), hashlib.sha256).digest())
    return f"{body}.{signature}"


def verified_payload(settings, text: str, use: str | None, expired: str = "This link has expired") -> dict:
    """The payload of an authentic, unexpired token made for ``use`` (None: an embed URL, whose payload names
    no use), checked without the database. Tampered, unknown or made for another use: 404 (like an unknown
    app); expired: 403 ``expired``."""
    body, _, signature = (text or "").partition(".")
    expected = _b64(hmac.new(embed_key(settings), body.encode(), hashlib.sha256).digest())
    if not body or not hmac.compare_digest(signature.encode(), expected.encode()):
        raise NotFound("No such app")
    payload = json.loads(_unb64(body))
    if not isinstance(payload, dict) or payload.get("use") != use:
        raise NotFound("No such app")
    if payload["exp"] <= time.time():
        raise PermissionDenied(expired)
    return payload


def verified(session, settings, text: str, use: str | None) -> tuple[dict, App]:
    """The payload of an authentic, unexpired token made for ``use`` (``verified_payload``) and its
    published app (404 if gone, unpublished or moved to another organization)."""
    expired = "This embed link has expired" if use is None else "This link has expired"
    payload = verified_payload(settings, text, use, expired)
    app = session.get(App, payload["app"])
    if app is None or app.current_version < 1 or app.org_id != payload["org"]:
        raise NotFound("No such app")
    return payload, app


def verify_embed(session, settings, text: str) -> tuple[dict, App]:
    """The payload of an authentic, unexpired embed token and its published app. Tampered or unknown: 404
    (like an unknown app); authentic but expired: 403 saying so (its holder got it legitimately)."""
    payload, app = verified(session, settings, text, None)
    if not public_apps_allowed(session, app.org_id):
        raise NotFound("No such app")
    return payload, app


# -- the visitors' kernels ---------------------------------------------------------------------------------
def visitor_token(session, settings, app: App, kind: TokenKind, scope: dict, ttl: int) -> str:
    return mint_token(
        session,
        kind=kind,
        user_id=None,
        org_id=app.org_id,
        ttl_seconds=ttl,
        note=f"app {app.id} {kind.value}",
        app_id=app.id,
        scope=scope,
    )


def visitor_principal(session, token: Token) -> Principal | None:
    """The principal of an anonymous visitor's kernel token, or None when its link or app is gone."""
    scope = token.scope or {}
    app = session.get(App, token.app_id) if token.app_id else None
    if token.kind not in VISITOR_NAME or app is None or app.current_version < 1 or app.org_id != token.org_id:
        return None
    # A print page is the platform's own (the scheduler's PDFs): it does not depend on public apps.
    if token.kind != TokenKind.print_page and not public_apps_allowed(session, app.org_id):
        return None
    if token.kind == TokenKind.public_app:
        link = public_link_of(session, app.id)
        if link is None or link.id != scope.get("link_id"):
            return None
    return Principal(
        user_id=0,  # no person: no user row has id 0
        email=VISITOR_NAME[token.kind],
        org_id=app.org_id,
        org_slug=session.get(Organization, app.org_id).slug,
        role=Role.viewer,
        via=token.kind.value,
        scope=AppScope(
            app_id=app.id,
            sources=frozenset(scope.get("sources") or ()),
            attributes={k: tuple(v) for k, v in (scope.get("attributes") or {}).items()},
            variables=dict(scope.get("variables") or {}),
        ),
    )

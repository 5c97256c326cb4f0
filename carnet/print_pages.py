"""Print pages: the Viewer's ``print/<token>`` page of an app, which the scheduler prints to PDF
(scheduler/viewer_pdf.py) so that a report is the app as the Viewer shows it (widgets, carnet.dash, charts).

The token is signed like an embed URL (carnet.app_links ``signed``, the same key) but its payload says
``"use": "print"``: an embed token does not open a print page, nor a print token an embed page. Only the
scheduler mints them (a trusted process with the platform database), for minutes, so they need neither the
org's public-apps setting nor a customer-facing origin. The page's kernel reads either

- as a member (``as_user``: a job prints as its owner, as its papermill kernel did: a ``job`` token, the
  owner's row rules; refused if the owner left, was disabled or may no longer open the app), or
- as nobody (``TokenKind.print_page``, like an embed visitor): restricted to the given attribute values (a
  recipient's row-rule values), the given variables, and only the app's sources.
"""

from __future__ import annotations

import secrets
import time

from carnet.app_links import app_sources, signed, verified, verified_payload, visitor_token
from carnet.db.models import App, TokenKind
from carnet.errors import NotFound
from carnet.query.service import check_variables
from carnet.row_security import check_attributes
from carnet.sharing import may_open, member_reader
from carnet.tokens import mint_token

PRINT_USE = "print"
MAX_PRINT_SECONDS = 3600


def sign_print(
    session,
    settings,
    app: App,
    *,
    attributes: dict | None = None,
    variables: dict | None = None,
    as_user: int | None = None,
    expires_in: int = 600,
) -> str:
    """The token of a print page of ``app`` (see the module's docstring for whom it reads as)."""
    payload = {
        "use": PRINT_USE,
        "app": app.id,
        "org": app.org_id,
        "user": as_user,
        "attr": check_attributes(attributes or {}),
        "var": check_variables(variables or {}),
        # Fixed now, as for embed URLs: the sources the current snapshot names.
        "src": [] if as_user is not None else app_sources(session, settings, app),
        "exp": int(time.time()) + max(1, min(int(expires_in), MAX_PRINT_SECONDS)),
        # Each token is one print's own, even for the same app, reader and second: a page the Viewer
        # pre-rendered for a token (render_pool.print_pool_key) is handed to that print only.
        "n": secrets.token_urlsafe(9),
    }
    return signed(settings, payload)


def print_payload(settings, text: str) -> dict:
    """The payload of an authentic, unexpired print token, checked without the platform database (the
    Viewer's pre-render route checks a token before asking the service anything). Tampered, unknown or made
    for another use: 404; expired: 403, with the same messages as ``print_session``."""
    return verified_payload(settings, text, PRINT_USE)


def print_session(session, settings, text: str) -> tuple[App, TokenKind, str, dict]:
    """The app of a print token, the kind and secret of its kernel's Carnet token, and the page's reader
    (``{"id", "email", "role"}``, the Viewer's kernel runs as that id's OS account). Unknown, tampered or
    for an owner who may no longer open the app: 404; expired: 403."""
    payload, app = verified(session, settings, text, PRINT_USE)
    ttl = max(1, int(payload["exp"] - time.time()))
    if payload.get("user") is None:
        scope = {"sources": payload["src"], "attributes": payload["attr"], "variables": payload["var"]}
        token = visitor_token(session, settings, app, TokenKind.print_page, scope, ttl)
        return app, TokenKind.print_page, token, {"id": -app.org_id, "email": "", "role": "viewer"}
    reader = member_reader(session, payload["user"], app.org_id, TokenKind.job.value)
    if reader is None:
        raise NotFound("No such app")
    if not may_open(session, reader, app):
        raise NotFound("No such app")
    token = mint_token(
        session,
        kind=TokenKind.job,
        user_id=reader.user_id,
        org_id=app.org_id,
        ttl_seconds=ttl,
        note=f"print of app {app.id}",
    )
    return (
        app,
        TokenKind.job,
        token,
        {"id": reader.user_id, "email": reader.email, "role": str(reader.role)},
    )

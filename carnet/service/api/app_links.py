"""/api/v1/apps/{id}/public-link and /api/v1/apps/{id}/embed: sharing an app beyond the organization
(studio and admins, where the org allows public apps; see carnet.app_links), and
/api/v1/internal/visitor-sessions: the Viewer turns a public link, embed token or print token
(carnet.print_pages) into a kernel token."""

from __future__ import annotations

import time

from jupyterhub.utils import url_path_join

from carnet.app_links import (
    app_sources,
    check_embed_request,
    create_public_link,
    find_public_link,
    public_link_json,
    public_link_of,
    require_public_apps,
    revoke_public_link,
    sign_embed,
    verify_embed,
    visitor_token,
)
from carnet.branding import branding
from carnet.data_versions import data_version
from carnet.db.models import Organization, TokenKind, User
from carnet.errors import NotFound, ValidationError
from carnet.org_settings import setting
from carnet.print_pages import print_session
from carnet.publishing import current_notebook_path
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized, service_only
from carnet.service.api.internal import VIEWER_SERVICE
from carnet.sharing import find_openable_app

EMBED_ORIGINS_SETTING = "embed_origins"


def visitor_url(handler: BaseHandler, kind: str, token: str) -> str:
    """The absolute URL a visitor opens (it leaves the organization: mails, customers' portals)."""
    base = handler.settings_obj.public_url.rstrip("/")
    return base + url_path_join(handler.settings["hub_base_url"], f"services/carnet-viewer/{kind}/{token}")


class AppPublicLinkHandler(BaseHandler):
    """The app's public link: GET whether it has one (never the secret again), POST makes or rotates it
    (the URL is in this answer only), DELETE revokes it."""

    def _app(self, session, making: bool = False):
        principal = self.principal()
        app = find_openable_app(session, principal, self.path_kwargs["app_id"])
        if making:  # seeing and revoking a link stay possible after the org turned public apps off
            require_public_apps(session, principal, app)
        return app

    @authorized("apps:share_public")
    def get(self, app_id):
        with self.db() as session:
            app = self._app(session)
            link = public_link_of(session, app.id)
            if link is None:
                self.write_json({"app_id": app.id, "public": False})
                return
            creator = session.get(User, link.created_by) if link.created_by else None
            self.write_json(public_link_json(link, creator.email if creator else None))

    @authorized("apps:share_public")
    def post(self, app_id):
        principal = self.principal()
        body = self.get_json_body()
        unknown = sorted(set(body) - {"sources"})
        if unknown:
            raise ValidationError(f"Unknown field {unknown[0]!r}", field=unknown[0])
        with self.db() as session:
            app = self._app(session, making=True)
            sources = app_sources(session, self.settings_obj, app, body.get("sources"))
            rotated = public_link_of(session, app.id) is not None
            link, secret = create_public_link(session, app, principal.user_id, sources)
            # Marked as public in the audit log: from now on anyone with the URL sees this app.
            self.audit(
                session,
                "app.public_link.create",
                f"app/{app.id}",
                slug=app.slug,
                public=True,
                rotated=rotated,
                sources=sources,
            )
            url = visitor_url(self, "public", secret)
            self.write_json(public_link_json(link, principal.email, url), status=201)

    @authorized("apps:share_public")
    def delete(self, app_id):
        with self.db() as session:
            app = self._app(session)
            if not revoke_public_link(session, app):
                raise NotFound("This app has no public link")
            self.audit(session, "app.public_link.revoke", f"app/{app.id}", slug=app.slug, public=False)
        self.set_status(204)
        self.finish()


class AppEmbedHandler(BaseHandler):
    """A signed URL to frame the app in another site, for visitors reading with the given attribute values
    and variables, until ``expires_in`` seconds from now."""

    @authorized("apps:share_public")
    def post(self, app_id):
        principal = self.principal()
        body = self.get_json_body()
        attributes, variables, expires_in = check_embed_request(body)
        with self.db() as session:
            app = find_openable_app(session, principal, app_id)
            require_public_apps(session, principal, app)
            sources = app_sources(session, self.settings_obj, app, body.get("sources"))
            token, expires_at = sign_embed(self.settings_obj, app, attributes, variables, expires_in, sources)
            self.audit(
                session,
                "app.embed.create",
                f"app/{app.id}",
                slug=app.slug,
                public=True,
                attributes=attributes,
                variables=sorted(variables),
                sources=sources,
                expires_at=expires_at.isoformat(),
            )
            self.write_json(
                {"url": visitor_url(self, "embed", token), "expires_at": expires_at.isoformat()}, status=201
            )


class VisitorSessionHandler(BaseHandler):
    """The Viewer asks for a page's reader: ``{"link": ...}``, ``{"embed": ...}`` or ``{"print": ...}`` (the
    scheduler's print page, carnet.print_pages) -> the kernel token and what the page needs. Unknown,
    revoked, tampered or unpublished: 404 (as an unknown app); an authentic but expired token: 403."""

    @service_only(VIEWER_SERVICE)
    def post(self):
        body = self.get_json_body()
        link_text, embed_text, print_text = body.get("link"), body.get("embed"), body.get("print")
        if not any(isinstance(text, str) for text in (link_text, embed_text, print_text)):
            raise ValidationError("link, embed or print is required", field="link")
        settings = self.settings_obj
        with self.db() as session:
            frame_ancestors = None
            # No person: the kernel runs as the org's visitors' OS account (carnet.isolation).
            reader = None
            printing = isinstance(print_text, str)
            if printing:  # the scheduler's print page (carnet.print_pages)
                app, kind, token, reader = print_session(session, settings, print_text)
            elif isinstance(link_text, str):
                link, app = find_public_link(session, link_text)
                kind = TokenKind.public_app
                scope = {"sources": list(link.sources or []), "attributes": {}, "variables": {}}
                scope["link_id"] = link.id
                ttl = settings.kernel_token_ttl
            else:
                payload, app = verify_embed(session, settings, embed_text)
                kind = TokenKind.embed
                scope = {
                    "sources": payload["src"],
                    "attributes": payload["attr"],
                    "variables": payload["var"],
                }
                # The kernel's token ends with the embed URL (verify_embed refused an expired one).
                ttl = max(1, min(settings.kernel_token_ttl, int(payload["exp"] - time.time())))
            org = session.get(Organization, app.org_id)
            if kind == TokenKind.embed:
                frame_ancestors = setting(org, EMBED_ORIGINS_SETTING) or "*"
            if kind in (TokenKind.public_app, TokenKind.embed):
                token = visitor_token(session, settings, app, kind, scope, ttl)
            reader = reader or {"id": -app.org_id, "email": "", "role": "viewer"}
            notebook = current_notebook_path(settings, app)
            self.write_json(
                {
                    "token": token,
                    "kind": kind.value,
                    "notebook_path": str(notebook.relative_to(settings.published_dir)),
                    # org_id: the Viewer's per-app/per-org kernel caps (render_pool) count visitors too.
                    "app": {
                        "id": app.id,
                        "title": app.title,
                        "version": app.current_version,
                        "org_id": app.org_id,
                    },
                    "user": reader,
                    "preview_by": None,
                    "branding": branding(settings.data_dir, org),
                    "frame_ancestors": frame_ancestors,
                    # A print page the Viewer pre-renders is used only while the data is unchanged
                    # (extension/render_pool.py print_pool_key).
                    **({"data_version": data_version(session, app.org_id)} if printing else {}),
                },
                status=201,
            )


default_handlers = [
    (API_PREFIX + r"apps/(?P<app_id>[^/]+)/public-link", AppPublicLinkHandler),
    (API_PREFIX + r"apps/(?P<app_id>[^/]+)/embed", AppEmbedHandler),
    (API_PREFIX + r"internal/visitor-sessions", VisitorSessionHandler),
]

"""/api/v1/internal: calls made only by Carnet's own Hub-managed services (never by people or kernels)."""

from __future__ import annotations

import hashlib
import json

from carnet.app_links import public_link_of
from carnet.branding import branding
from carnet.data_versions import data_version
from carnet.db.models import App, Organization, Role, TokenKind
from carnet.errors import NotFound, PasswordChangeRequired, PermissionDenied, ValidationError
from carnet.people import member
from carnet.permissions import Principal
from carnet.publishing import current_notebook_path
from carnet.row_security import row_context_for
from carnet.service.api.base import API_PREFIX, BaseHandler, principal_for_email, service_only
from carnet.sharing import find_openable_app
from carnet.tokens import mint_token
from carnet.validation import parse_id

VIEWER_SERVICE = "carnet-viewer"


class ViewerSessionHandler(BaseHandler):
    """The Viewer asks: may ``user`` open app ``app_id``? If so it gets a token for that user's kernel.

    The token carries the viewer's identity (never an author's), so every query of the app's kernel
    is made as the person looking at it.
    """

    @service_only(VIEWER_SERVICE)
    def post(self):
        body = self.get_json_body()
        email = body.get("user")
        if not isinstance(email, str) or not email:
            raise ValidationError("user is required", field="user")
        with self.db() as session:
            # The app says which organization is meant (a person may belong to several); someone who is
            # not a member of it learns nothing more than from an unknown id.
            app = session.get(App, parse_id(body.get("app_id"), "No such app"))
            if app is None:
                raise NotFound("No such app")
            try:
                principal = principal_for_email(
                    session,
                    email,
                    requested_org=session.get(Organization, app.org_id).slug,
                    settings=self.settings_obj,
                )
            except PasswordChangeRequired:
                raise  # 403 with the change-password address: the Viewer shows it
            except (PermissionDenied, NotFound):
                raise NotFound("No such app") from None
            # Not shared with them reads exactly like an unknown app (the Viewer answers 404).
            app = find_openable_app(session, principal, body.get("app_id"))
            preview_by = None
            if body.get("as_user") is not None:
                # An admin sees the app as that member sees it: the kernel carries the member's identity
                # (their row rules apply), the page and the kernel stay the admin's.
                preview_by, principal = principal, preview_principal(session, principal, app, body["as_user"])
                self.audit(session, "app.preview_as", f"app/{app.id}", by=preview_by, user=principal.email)
            token = mint_token(
                session,
                kind=TokenKind.viewer_kernel,
                user_id=principal.user_id,
                org_id=principal.org_id,
                ttl_seconds=token_ttl(body, self.settings_obj.kernel_token_ttl),
                note=f"app {app.id}" + (f" preview by {preview_by.email}" if preview_by else ""),
            )
            notebook = current_notebook_path(self.settings_obj, app)
            self.write_json(
                {
                    "token": token,
                    "notebook_path": str(notebook.relative_to(self.settings_obj.published_dir)),
                    "app": {
                        "id": app.id,
                        "title": app.title,
                        "version": app.current_version,
                        "org_id": app.org_id,
                    },
                    # What the app's data depends on besides its version: the Viewer's render pool shares
                    # a pre-rendered page only between equal fingerprints (extension/render_pool.py).
                    "row_context": row_context_fingerprint(session, principal),
                    "data_version": data_version(session, app.org_id),
                    "user": {"id": principal.user_id, "email": principal.email, "role": principal.role.value},
                    "preview_by": preview_by.email if preview_by else None,
                    # The page is marked "Public" when the app has a public link (carnet.app_links).
                    "public": public_link_of(session, app.id) is not None,
                    # The app's own organization's branding: the Viewer never takes it from the notebook.
                    "branding": branding(self.settings_obj.data_dir, session.get(Organization, app.org_id)),
                },
                status=201,
            )


def token_ttl(body: dict, longest: int) -> int:
    """The kernel token's lifetime: ``longest`` unless the Viewer asks for less (``ttl_seconds``, e.g. for a
    page its render pool pre-renders: that token is replaced at hand-over or dies with the kernel)."""
    asked = body.get("ttl_seconds")
    if asked is None:
        return longest
    if not isinstance(asked, int) or isinstance(asked, bool) or asked < 60:
        raise ValidationError(
            "ttl_seconds must be a whole number of seconds, at least 60", field="ttl_seconds"
        )
    return min(asked, longest)


def row_context_fingerprint(session, principal: Principal) -> str:
    """A hash of what row-level rules see of ``principal``: their organization, whether they are restricted
    and their attribute values. Equal fingerprints read equal rows from every source."""
    context = row_context_for(session, principal)
    raw = json.dumps([principal.org_id, context.restricted, context.cache_key()])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def preview_principal(session, admin, app, as_user) -> Principal:
    """The member ``as_user`` of the app's organization, for ``admin``'s preview; 403 for anyone but an admin,
    404 (as for an unknown app) when the member does not exist there or may not open the app."""
    if admin.role != Role.admin:
        raise PermissionDenied("Only admins may preview an app as another person")
    membership = member(session, app.org_id, as_user)
    target = Principal(
        user_id=membership.user_id,
        email=membership.user.email,
        org_id=app.org_id,
        org_slug=admin.org_slug,
        role=membership.role,
        via="hub",
    )
    if not membership.user.is_active:
        raise NotFound("No such app")
    find_openable_app(session, target, app.id)
    return target


default_handlers = [
    (API_PREFIX + r"internal/viewer-sessions", ViewerSessionHandler),
]

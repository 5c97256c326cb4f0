"""/api/v1/internal: calls made only by Carnet's own Hub-managed services (never by people or kernels)."""

from __future__ import annotations

from carnet.branding import branding
from carnet.db.models import App, Organization, TokenKind
from carnet.errors import NotFound, PasswordChangeRequired, PermissionDenied, ValidationError
from carnet.publishing import current_notebook_path
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
            token = mint_token(
                session,
                kind=TokenKind.viewer_kernel,
                user_id=principal.user_id,
                org_id=principal.org_id,
                ttl_seconds=self.settings_obj.kernel_token_ttl,
                note=f"app {app.id}",
            )
            notebook = current_notebook_path(self.settings_obj, app)
            self.write_json(
                {
                    "token": token,
                    "notebook_path": str(notebook.relative_to(self.settings_obj.published_dir)),
                    "app": {"id": app.id, "title": app.title, "version": app.current_version},
                    "user": {"id": principal.user_id, "email": principal.email, "role": principal.role.value},
                    # The app's own organization's branding: the Viewer never takes it from the notebook.
                    "branding": branding(self.settings_obj.data_dir, session.get(Organization, app.org_id)),
                },
                status=201,
            )


default_handlers = [
    (API_PREFIX + r"internal/viewer-sessions", ViewerSessionHandler),
]

"""/api/v1/apps: the apps a person may open, and publishing notebooks as apps."""

from __future__ import annotations

from carnet.publishing import find_app, publish, visible_apps
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.serialize import app_json


def viewer_url(handler: BaseHandler, app_id: int) -> str:
    return f"{handler.settings['hub_base_url']}services/carnet-viewer/apps/{app_id}"


def app_listing(handler: BaseHandler, session, org_id: int) -> list[dict]:
    """The apps a member of ``org_id`` may open, with their Viewer URLs (API and gallery alike)."""
    return [{**app_json(app), "url": viewer_url(handler, app.id)} for app in visible_apps(session, org_id)]


class AppListHandler(BaseHandler):
    @authorized("apps:list")
    def get(self):
        principal = self.principal()
        with self.db() as session:
            apps = app_listing(self, session, principal.org_id)
        self.write_json({"apps": apps})

    @authorized("apps:publish")
    def post(self):
        principal = self.principal()
        body = self.get_json_body()
        with self.db() as session:
            app = publish(
                session,
                self.settings_obj,
                org_id=principal.org_id,
                user_id=principal.user_id,
                slug=body.get("slug"),
                title=body.get("title"),
                description=str(body.get("description", "")),
                notebook=body.get("notebook"),
            )
            self.audit(session, "app.publish", f"app/{app.id}", slug=app.slug, version=app.current_version)
            session.flush()
            self.write_json({**app_json(app), "url": viewer_url(self, app.id)}, status=201)


class AppHandler(BaseHandler):
    @authorized("apps:read")
    def get(self, app_id):
        principal = self.principal()
        with self.db() as session:
            app = find_app(session, principal.org_id, app_id)
            self.write_json({**app_json(app), "url": viewer_url(self, app.id)})


default_handlers = [
    (API_PREFIX + r"apps", AppListHandler),
    (API_PREFIX + r"apps/(?P<app_id>[^/]+)", AppHandler),
]

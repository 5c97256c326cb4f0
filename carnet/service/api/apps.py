"""/api/v1/apps: the apps a person may open, publishing notebooks as apps, sharing and unpublishing them.

Who may open what is decided by ``carnet.sharing`` (one rule for the API, the gallery, the Viewer and jobs).
"""

from __future__ import annotations

from sqlalchemy import select

from carnet.db.models import App
from carnet.errors import Conflict
from carnet.publishing import publish
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.serialize import app_json
from carnet.sharing import (
    find_openable_app,
    may_open,
    openable_apps,
    parse_force,
    remove_folders,
    set_sharing,
    sharing_json,
    unpublish,
)


def viewer_url(handler: BaseHandler, app_id: int) -> str:
    return f"{handler.settings['hub_base_url']}services/carnet-viewer/apps/{app_id}"


def app_listing(handler: BaseHandler, session, principal) -> list[dict]:
    """The apps ``principal`` may open, with their Viewer URLs (API and gallery alike)."""
    apps = openable_apps(session, principal)
    return [{**app_json(app), "url": viewer_url(handler, app.id)} for app in apps]


class AppListHandler(BaseHandler):
    @authorized("apps:list")
    def get(self):
        principal = self.principal()
        with self.db() as session:
            apps = app_listing(self, session, principal)
        self.write_json({"apps": apps})

    @authorized("apps:publish")
    def post(self):
        principal = self.principal()
        body = self.get_json_body()
        with self.db() as session:
            slug = body.get("slug")
            existing = isinstance(slug, str) and session.scalar(
                select(App).where(App.org_id == principal.org_id, App.slug == slug)
            )
            # Publishing a new version makes one the publisher, who may always open the app: without
            # this check, re-using the slug of a restricted app would be a way into it.
            if existing and not may_open(session, principal, existing):
                raise Conflict("This slug is taken by an app that is not shared with you", field="slug")
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
            app = find_openable_app(session, principal, app_id)
            self.write_json({**app_json(app), "url": viewer_url(self, app.id)})

    @authorized("apps:unpublish")
    def delete(self, app_id):
        """Unpublish: the app, its versions, shares and snapshot files go. Jobs running it make this a 409
        listing them, unless ``?force=true`` (then they and their runs' files go too)."""
        force = parse_force(self.get_query_argument("force", None))
        with self.db() as session:
            app = find_openable_app(session, self.principal(), app_id)
            target = f"app/{app.id}"
            done = unpublish(session, self.settings_obj, app, force=force)
            self.audit(session, "app.unpublish", target, **done["details"])
        # Files only once the deletion has committed: a failed commit leaves the app whole.
        remove_folders(done["folders"])
        self.set_status(204)
        self.finish()


class AppSharingHandler(BaseHandler):
    @authorized("apps:share")
    def get(self, app_id):
        with self.db() as session:
            app = find_openable_app(session, self.principal(), app_id)
            self.write_json(sharing_json(session, app))

    @authorized("apps:share")
    def put(self, app_id):
        principal = self.principal()
        with self.db() as session:
            app = find_openable_app(session, principal, app_id)
            changes = set_sharing(session, principal, app, self.get_json_body())
            self.audit(session, "app.share", f"app/{app.id}", **changes)
            if changes["visibility"]["to"] == "public" and changes["visibility"]["from"] != "public":
                self.audit(session, "app.public", f"app/{app.id}", slug=app.slug)
            session.flush()
            self.write_json(sharing_json(session, app))


default_handlers = [
    (API_PREFIX + r"apps", AppListHandler),
    (API_PREFIX + r"apps/(?P<app_id>[^/]+)", AppHandler),
    (API_PREFIX + r"apps/(?P<app_id>[^/]+)/sharing", AppSharingHandler),
]

"""/api/v1/apps: the apps a person may open (search, tags, favourites), publishing notebooks as apps,
their metadata, versions and rollback, sharing and unpublishing them. Thumbnails: ``app_thumbnails``.

Who may open what is decided by ``carnet.sharing`` (one rule for the API, the gallery, the Viewer and jobs).
"""

from __future__ import annotations

from jupyterhub.utils import url_path_join
from sqlalchemy import select

from carnet.app_links import public_app_ids
from carnet.catalog import favourite_ids, gallery_apps, parse_filter, set_favourite, version_counts
from carnet.db.models import App
from carnet.errors import Conflict, ValidationError
from carnet.publishing import publish, restore_version, update_metadata, versions_json
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.serialize import app_json
from carnet.sharing import (
    find_openable_app,
    may_open,
    parse_force,
    remove_folders,
    set_sharing,
    sharing_json,
    unpublish,
)


def viewer_url(handler: BaseHandler, app_id: int) -> str:
    return f"{handler.settings['hub_base_url']}services/carnet-viewer/apps/{app_id}"


def thumbnail_url(handler: BaseHandler, app: App) -> str | None:
    if not app.thumbnail_path:
        return None
    # The file name changes with each upload, so browsers never show a replaced thumbnail from cache.
    version = app.thumbnail_path.rsplit("/", 1)[-1].split(".")[0].removeprefix("thumbnail-")
    path = url_path_join(handler.settings["service_prefix"], API_PREFIX, f"apps/{app.id}/thumbnail")
    return f"{path}?v={version}"


def app_answer(
    handler: BaseHandler, session, principal, app: App, favourites=None, counts=None, public=None
) -> dict:
    """One app as the API shows it to ``principal`` (``favourites``/``counts``/``public``: precomputed for
    lists)."""
    favourites = favourite_ids(session, principal.user_id) if favourites is None else favourites
    counts = version_counts(session, [app.id]) if counts is None else counts
    public = public_app_ids(session, [app.id]) if public is None else public
    return {
        **app_json(
            app,
            favourite=app.id in favourites,
            versions=counts.get(app.id, 0),
            thumbnail_url=thumbnail_url(handler, app),
        ),
        "url": viewer_url(handler, app.id),
        # Anyone with its public link may open it (carnet.app_links): the UI marks it.
        "public": app.id in public,
    }


def app_listing(handler: BaseHandler, session, principal) -> list[dict]:
    """The apps ``principal`` may open that match the request's ``q``, ``tag`` and ``favourites``
    arguments, favourites first, with their Viewer URLs (API and gallery alike)."""
    wanted = parse_filter(
        handler.get_query_argument("q", None),
        handler.get_query_arguments("tag"),
        handler.get_query_argument("favourites", None),
    )
    apps, favourites = gallery_apps(session, principal, wanted)
    counts = version_counts(session, [app.id for app in apps])
    public = public_app_ids(session, [app.id for app in apps])
    return [app_answer(handler, session, principal, app, favourites, counts, public) for app in apps]


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
                description=body.get("description"),
                tags=body.get("tags"),
                note=body.get("note"),
                notebook=body.get("notebook"),
            )
            self.audit(
                session,
                "app.publish",
                f"app/{app.id}",
                slug=app.slug,
                version=app.current_version,
                tags=app.tags,
            )
            session.flush()
            self.write_json(app_answer(self, session, principal, app), status=201)


class AppHandler(BaseHandler):
    @authorized("apps:read")
    def get(self, app_id):
        principal = self.principal()
        with self.db() as session:
            app = find_openable_app(session, principal, app_id)
            self.write_json(app_answer(self, session, principal, app))

    @authorized("apps:publish")
    def patch(self, app_id):
        """Title, description and tags, without a new version (the snapshot is unchanged)."""
        principal = self.principal()
        body = self.get_json_body()
        with self.db() as session:
            app = find_openable_app(session, principal, app_id)
            changes = update_metadata(app, body)
            if changes:
                self.audit(session, "app.update", f"app/{app.id}", slug=app.slug, **changes)
            session.flush()
            self.write_json(app_answer(self, session, principal, app))

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


class AppVersionsHandler(BaseHandler):
    @authorized("apps:publish")
    def get(self, app_id):
        with self.db() as session:
            app = find_openable_app(session, self.principal(), app_id)
            self.write_json({"app_id": app.id, "versions": versions_json(session, app)})


class AppRestoreHandler(BaseHandler):
    @authorized("apps:publish")
    def post(self, app_id, version):
        """Rollback: a new version copying ``version``'s snapshot becomes current (history stays linear)."""
        principal = self.principal()
        body = self.get_json_body()
        unknown = sorted(set(body) - {"note"})
        if unknown:
            raise ValidationError(f"These fields cannot be set here: {', '.join(unknown)}", field=unknown[0])
        with self.db() as session:
            app = find_openable_app(session, principal, app_id)
            new = restore_version(
                session, self.settings_obj, app, version, principal.user_id, note=body.get("note")
            )
            self.audit(
                session, "app.restore", f"app/{app.id}", slug=app.slug, restored=int(version), version=new
            )
            session.flush()
            self.write_json(app_answer(self, session, principal, app), status=201)


class AppFavouriteHandler(BaseHandler):
    """Marking an app as a favourite is for anyone who may open it; the mark is the caller's own."""

    def _set(self, app_id, on: bool):
        principal = self.principal()
        with self.db() as session:
            app = find_openable_app(session, principal, app_id)
            if set_favourite(session, principal.user_id, app, on):
                self.audit(session, "app.favourite" if on else "app.unfavourite", f"app/{app.id}")
            session.flush()
            self.write_json(app_answer(self, session, principal, app))

    @authorized("apps:read")
    def put(self, app_id):
        self._set(app_id, True)

    @authorized("apps:read")
    def delete(self, app_id):
        self._set(app_id, False)


default_handlers = [
    (API_PREFIX + r"apps", AppListHandler),
    (API_PREFIX + r"apps/(?P<app_id>[^/]+)", AppHandler),
    (API_PREFIX + r"apps/(?P<app_id>[^/]+)/sharing", AppSharingHandler),
    (API_PREFIX + r"apps/(?P<app_id>[^/]+)/versions", AppVersionsHandler),
    (API_PREFIX + r"apps/(?P<app_id>[^/]+)/versions/(?P<version>[^/]+)/restore", AppRestoreHandler),
    (API_PREFIX + r"apps/(?P<app_id>[^/]+)/favourite", AppFavouriteHandler),
]

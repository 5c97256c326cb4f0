"""The Viewer's home page: the apps the signed-in person may open (server-rendered), with the API's search,
tag filter and favourites (``?q=``, ``?tag=``, ``?favourites=true``; the star is a small form)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from tornado import web

from carnet.branding import branding
from carnet.catalog import set_favourite
from carnet.errors import CarnetError, OrganizationChoiceRequired
from carnet.org_settings import get_org
from carnet.service.api.apps import app_listing
from carnet.service.api.base import BaseHandler, authorized
from carnet.service.page_policy import page_policy
from carnet.sharing import find_openable_app

page_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape()
)


class PageHandler(BaseHandler):
    """A server-rendered page (not the JSON API): errors are answered as small HTML pages."""

    # Who may frame the page (the policy's frame-ancestors); a page meant to be embedded widens it.
    frame_ancestors = "'none'"

    def set_default_headers(self):
        super().set_default_headers()
        # No script runs on these pages but the admin page's confirmation prompts (page_policy.py).
        self.set_header("Content-Security-Policy", page_policy(self.frame_ancestors))
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_error(self, status_code, **kwargs):
        # A page, not an API: answer errors as plain HTML.
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.message if isinstance(exc, CarnetError) else "Something went wrong"
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(f"<!doctype html><h1>{status_code}</h1><p>{web.escape.xhtml_escape(message)}</p>")


class GalleryHandler(PageHandler):
    def prepare(self):
        # Someone in several organizations first picks one (the choice travels as ?org=<slug>).
        if not self.current_user:
            return  # @web.authenticated on get() sends them to sign in
        try:
            self.principal()
        except OrganizationChoiceRequired as choice:
            page = page_templates.get_template("choose_org.html").render(
                orgs=choice.fields["orgs"], hub_base_url=self.settings["hub_base_url"]
            )
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.finish(page)
        except CarnetError:
            return  # get() answers it as usual

    @web.authenticated
    @authorized("apps:list")
    def get(self):
        principal = self.principal()
        with self.db() as session:
            apps = app_listing(self, session, principal)
            # The same branding as the Viewer's app pages of this organization (carnet/branding.py).
            brand = branding(self.settings_obj.data_dir, get_org(session, principal.org_id))
        page = page_templates.get_template("gallery.html").render(
            apps=apps,
            branding=brand,
            org=principal.org_slug,
            email=principal.email,
            hub_base_url=self.settings["hub_base_url"],
            gallery_url=gallery_url(self),
            q=self.get_query_argument("q", ""),
            tags=self.get_query_arguments("tag"),
            favourites_only=self.get_query_argument("favourites", "") in ("true", "1"),
            xsrf=self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes) else self.xsrf_token,
        )
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(page)


def gallery_url(handler: BaseHandler) -> str:
    return handler.settings["service_prefix"].rstrip("/") + "/viewer/"


class GalleryFavouriteHandler(PageHandler):
    """The gallery's star: a form posting ``on=1`` or ``on=0``, answered by going back to the gallery."""

    @web.authenticated
    @authorized("apps:read")
    def post(self, app_id):
        principal = self.principal()
        on = self.get_body_argument("on", "1") == "1"
        with self.db() as session:
            app = find_openable_app(session, principal, app_id)
            if set_favourite(session, principal.user_id, app, on):
                self.audit(session, "app.favourite" if on else "app.unfavourite", f"app/{app.id}")
        back = self.get_body_argument("back", "")
        # Only a query string appended to the gallery's own path: never an address elsewhere.
        query = back if back.startswith("?") and back.isprintable() else ""
        self.redirect(gallery_url(self) + query, status=303)


default_handlers = [
    (r"viewer/?", GalleryHandler),
    (r"viewer/apps/(?P<app_id>[^/]+)/favourite", GalleryFavouriteHandler),
]

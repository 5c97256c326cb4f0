"""The Viewer's home page: the apps the signed-in person may open (server-rendered)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from tornado import web

from carnet.errors import CarnetError, OrganizationChoiceRequired
from carnet.service.api.apps import app_listing
from carnet.service.api.base import BaseHandler, authorized

page_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape()
)


class PageHandler(BaseHandler):
    """A server-rendered page (not the JSON API): errors are answered as small HTML pages."""

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
        page = page_templates.get_template("gallery.html").render(
            apps=apps,
            org=principal.org_slug,
            email=principal.email,
            hub_base_url=self.settings["hub_base_url"],
        )
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(page)


default_handlers = [
    (r"viewer/?", GalleryHandler),
]

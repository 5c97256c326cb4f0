"""/api/v1/org: the caller's organization and its settings (any member reads; admins change), and its
logo (/api/v1/org/logo: PNG or JPEG, checked by carnet.branding)."""

from __future__ import annotations

from carnet.branding import read_logo, remove_logo, store_logo
from carnet.errors import NotFound
from carnet.org_settings import get_org, org_json, update_settings
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized


class OrgHandler(BaseHandler):
    @authorized("org:read")
    def get(self):
        with self.db() as session:
            self.write_json(org_json(get_org(session, self.principal().org_id)))

    @authorized("org:manage")
    def patch(self):
        body = self.get_json_body()
        with self.db() as session:
            org = get_org(session, self.principal().org_id)
            changed = update_settings(session, org, body)
            if changed:
                self.audit(session, "org.settings.change", f"org/{org.slug}", **changed)
            self.write_json(org_json(org))


class OrgLogoHandler(BaseHandler):
    """The organization's logo. Served with its checked type and nosniff, so a browser never reads it as
    anything but an image."""

    @authorized("org:read")
    def get(self):
        with self.db() as session:
            logo = read_logo(self.settings_obj.data_dir, get_org(session, self.principal().org_id))
        if logo is None:
            raise NotFound("This organization has no logo")
        data, content_type = logo
        self.set_header("Content-Type", content_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.set_header("Cache-Control", "private, no-cache")
        self.write(data)

    @authorized("org:manage")
    def put(self):
        with self.db() as session:
            org = get_org(session, self.principal().org_id)
            logo = store_logo(self.settings_obj.data_dir, org, self.request.body)
            self.audit(session, "org.logo.change", f"org/{org.slug}", **logo)
            self.write_json({"logo": logo})

    @authorized("org:manage")
    def delete(self):
        with self.db() as session:
            org = get_org(session, self.principal().org_id)
            if remove_logo(self.settings_obj.data_dir, org):
                self.audit(session, "org.logo.remove", f"org/{org.slug}")
        self.set_status(204)


default_handlers = [(API_PREFIX + r"org", OrgHandler), (API_PREFIX + r"org/logo", OrgLogoHandler)]

"""/api/v1/org: the caller's organization and its settings (any member reads; admins change)."""

from __future__ import annotations

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


default_handlers = [(API_PREFIX + r"org", OrgHandler)]

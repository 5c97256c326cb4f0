"""The admin page's organization-settings form: the same validation (``carnet.org_settings``) and audit
record (``org.settings.change``) as PATCH /api/v1/org; and its logo form (as /api/v1/org/logo)."""

from __future__ import annotations

from tornado import web

from carnet.branding import remove_logo, store_logo
from carnet.errors import CarnetError, ValidationError
from carnet.org_settings import SETTINGS, from_form, get_org, update_settings
from carnet.service.admin_page import AdminBase
from carnet.service.api.base import authorized


class AdminSettingsHandler(AdminBase):
    @web.authenticated
    @authorized("org:manage")
    def post(self):
        # An unchecked box sends nothing (from_form reads it as false); an emptied text field is validated.
        fields = {k: v for k in SETTINGS if (v := self.get_body_argument(k, None)) is not None}
        try:
            with self.db() as session:
                org = get_org(session, self.principal().org_id)
                changed = update_settings(session, org, from_form(fields))
                if changed:
                    self.audit(session, "org.settings.change", f"org/{org.slug}", **changed)
        except CarnetError as exc:
            return self.render_page(error=exc.message, status=exc.status)
        message = f"Settings saved: {', '.join(changed)}" if changed else "Nothing to change in the settings"
        self.render_page(message=message)


class AdminLogoHandler(AdminBase):
    """The settings section's logo form (multipart): the same checks and audit records as /api/v1/org/logo."""

    @web.authenticated
    @authorized("org:manage")
    def post(self):
        upload = (self.request.files.get("logo") or [None])[0]
        try:
            with self.db() as session:
                org = get_org(session, self.principal().org_id)
                if self.get_body_argument("remove", None):
                    if remove_logo(self.settings_obj.data_dir, org):
                        self.audit(session, "org.logo.remove", f"org/{org.slug}")
                    message = "Logo removed"
                else:
                    if upload is None:
                        raise ValidationError("Choose a PNG or JPEG file", field="logo")
                    logo = store_logo(self.settings_obj.data_dir, org, upload["body"])
                    self.audit(session, "org.logo.change", f"org/{org.slug}", **logo)
                    message = "Logo saved"
        except CarnetError as exc:
            return self.render_page(error=exc.message, status=exc.status)
        self.render_page(message=message)


default_handlers = [(r"admin/settings", AdminSettingsHandler), (r"admin/settings/logo", AdminLogoHandler)]

"""/api/v1/org/mail: the organization's own SMTP settings (admins, people only), and a test mail.

Without settings of its own an organization's mail goes the platform's way (CARNET_SMTP_*, else the local
outbox folder). The password is write-only: stored encrypted (carnet.scheduler.mail), answered as
``password_set``, never written to the audit log. ``POST /org/mail/test`` connects to whatever host the
admin gave: it is for the org's admins only (people, not keys), like the settings themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib

from carnet.errors import ValidationError
from carnet.org_settings import get_org
from carnet.scheduler.mail import (
    MailServerFailed,
    build_message,
    deliver,
    describe_failure,
    org_smtp,
    platform_smtp,
    public_json,
    remove_org_smtp,
    store_org_smtp,
    validate_org_smtp,
)
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.validation import validate_email

# An admin waits for the answer: shorter than the outbox's timeout.
TEST_MAIL_TIMEOUT = 15.0


class OrgMailHandler(BaseHandler):
    @authorized("org:mail")
    def get(self):
        with self.db() as session:
            self.write_json(public_json(get_org(session, self.principal().org_id)))

    @authorized("org:mail")
    def put(self):
        # Checked whole before the org is even read: a bad field stores nothing.
        checked, password = validate_org_smtp(self.get_json_body())
        with self.db() as session:
            org = get_org(session, self.principal().org_id)
            changed = store_org_smtp(self.settings_obj, org, checked, password)
            if changed:
                self.audit(session, "org.mail.change", f"org/{org.slug}", **changed)
            self.write_json(public_json(org))

    @authorized("org:mail")
    def delete(self):
        with self.db() as session:
            org = get_org(session, self.principal().org_id)
            if remove_org_smtp(org):
                self.audit(session, "org.mail.remove", f"org/{org.slug}")
        self.set_status(204)


class OrgMailTestHandler(BaseHandler):
    """Send one mail the way the organization's mail goes (its own settings, else the platform's)."""

    @authorized("org:mail")
    async def post(self):
        body = self.get_json_body()
        unknown = sorted(set(body) - {"to"})
        if unknown:
            raise ValidationError(f"Unknown fields: {', '.join(unknown)} (known: to)", field=unknown[0])
        to = validate_email(body.get("to"), field="to")
        with self.db() as session:
            org = get_org(session, self.principal().org_id)
            own = org_smtp(self.settings_obj, org)
            slug, name = org.slug, org.name
        config = dataclasses.replace(own or platform_smtp(self.settings_obj), timeout=TEST_MAIL_TIMEOUT)
        message = build_message(
            config.sender,
            [to],
            f"[Carnet] Test mail for {name}",
            f"This is a test mail from Carnet, sent with the mail settings of {name}.\n"
            "If you can read it, the organization's reports and notices can reach you.\n",
        )
        settings_used = "organization" if own else "platform"
        try:
            # smtplib blocks: off the event loop, so other requests go on while the server answers.
            await asyncio.to_thread(deliver, config, message)
        except (OSError, smtplib.SMTPException) as exc:
            reason = describe_failure(exc, config)
            if not own:  # the platform's server is the operator's: its address and replies stay theirs
                self.log.warning("Test mail of org %s through the platform's server failed: %s", slug, reason)
                reason = "The platform's mail server did not take the test mail: ask the platform's operator"
            with self.db() as session:
                self.audit(session, "org.mail.test", f"org/{slug}", to=to, delivered=False, error=reason)
            raise MailServerFailed(reason, settings=settings_used) from None
        with self.db() as session:
            self.audit(session, "org.mail.test", f"org/{slug}", to=to, delivered=True)
        self.write_json({"delivered": True, "to": to, "settings": settings_used, "from": config.sender})


default_handlers = [
    (API_PREFIX + r"org/mail", OrgMailHandler),
    (API_PREFIX + r"org/mail/test", OrgMailTestHandler),
]

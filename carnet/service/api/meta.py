"""/api/v1/ (version), /api/v1/me (who am I), /api/v1/openapi.json (the API's description)."""

from __future__ import annotations

import carnet
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.openapi import openapi_document


class RootHandler(BaseHandler):
    def get(self):
        # Public on purpose: lets clients check they talk to Carnet and which version.
        self.write_json({"name": "carnet", "version": carnet.__version__, "api": "v1"})


class MeHandler(BaseHandler):
    open_before_own_password = frozenset({"GET"})  # a person with a one-time password may see who they are

    @authorized("me:read")
    def get(self):
        principal = self.principal()
        self.write_json(
            {
                "email": principal.email,
                "org": principal.org_slug,
                "role": principal.role.value,
                "via": principal.via,
            }
        )


class OpenAPIHandler(BaseHandler):
    def get(self):
        # Public on purpose: describes the API, reveals no data.
        self.write_json(openapi_document(self.settings["service_prefix"]))


default_handlers = [
    (API_PREFIX + r"?", RootHandler),
    (API_PREFIX + r"me", MeHandler),
    (API_PREFIX + r"openapi.json", OpenAPIHandler),
]

PUBLIC_HANDLERS = (RootHandler, OpenAPIHandler)

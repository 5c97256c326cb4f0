"""Base handler of the REST API: who is calling, JSON in and out, errors as ``{status, message}``."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
import traceback
from http import HTTPStatus

import pyarrow as pa
from jupyterhub.services.auth import HubOAuthenticated
from sqlalchemy import select
from tornado import web

from carnet.api_keys import API_KEY_PREFIX, resolve_api_key
from carnet.app_links import visitor_principal
from carnet.audit import client_address
from carnet.audit import record as audit_record
from carnet.db import session_scope
from carnet.db.models import Membership, User
from carnet.errors import (
    AuthenticationRequired,
    CarnetError,
    NotFound,
    OrganizationChoiceRequired,
    PermissionDenied,
    ValidationError,
)
from carnet.first_sign_in import require_own_password
from carnet.permissions import API_KEY_VIA, PEOPLE_ONLY_ACTIONS, Principal
from carnet.tokens import TOKEN_PREFIX, resolve_token

API_PREFIX = "api/v1/"
# Paths whose last segment is the credential itself (a job's webhook secret, a push endpoint's token): never
# written to a log as they are (tornado logs every request's URI, failed ones at warning level).
_SECRET_IN_PATH = re.compile(r"(/api/v1/(?:hooks/jobs|push)/)[^/?#]+")


def without_path_secrets(uri: str) -> str:
    """``uri`` with a webhook secret or a push token in its path replaced by ``[secret]``."""
    return _SECRET_IN_PATH.sub(r"\1[secret]", uri)


ARROW_STREAM = "application/vnd.apache.arrow.stream"
ARROW_BATCH_ROWS = 65_536
ARROW_STREAM_ABOVE_BYTES = 16 * 1024 * 1024


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """Identifies the caller. Three kinds of callers exist:

    - a person through the Hub (OAuth cookie in a browser, or a Hub API token);
    - a Carnet token (``ck_...``) held by a kernel or a job run, bound to one user and one org;
    - an org API key (``cak_...``, as ``Authorization: Bearer`` or ``X-Api-Key``) held by a program;
    - a Hub-managed Carnet service (the Viewer, the scheduler), through its own Hub token.
    """

    # Methods a person still holding a one-time password may call (GET /me, POST /me/password); every
    # other request of theirs is refused by principal_for_email (carnet.first_sign_in).
    open_before_own_password: frozenset[str] = frozenset()

    def _request_summary(self) -> str:
        # Tornado's line for the access log and for logged errors, without a credential in the path.
        return f"{self.request.method} {without_path_secrets(self.request.uri)} ({self.request.remote_ip})"

    @property
    def hub_auth(self):
        # The service's HubOAuth (made in carnet.service.app), whose cache length is
        # CarnetSettings.hub_auth_cache_seconds, rather than HubOAuth's process-wide default instance.
        return self.settings.get("hub_auth") or HubOAuthenticated.hub_auth.fget(self)

    @property
    def settings_obj(self):
        return self.settings["carnet_settings"]

    @property
    def db_url(self) -> str:
        return self.settings_obj.db_url

    def db(self):
        return session_scope(self.db_url)

    def _bearer(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("bearer", "token") and value.strip().startswith(TOKEN_PREFIX):
            return value.strip()
        return None

    def _api_key(self) -> str | None:
        """An API key: ``X-Api-Key: <key>`` (whatever it holds, so garbage is a 401) or ``Bearer cak_...``."""
        header = self.request.headers.get("X-Api-Key")
        if header is not None:
            return header.strip()
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() in ("bearer", "token") and value.strip().startswith(API_KEY_PREFIX):
            return value.strip()
        return None

    def get_current_user(self):
        # Carnet tokens and API keys are checked locally; everything else goes to the Hub (cached by HubAuth).
        if self._bearer() or self._api_key() is not None:
            return None
        return super().get_current_user()

    def check_xsrf_cookie(self):
        # Token-authenticated calls carry no cookie, so there is nothing to forge.
        if self._bearer() or self._api_key() is not None or self.request.headers.get("Authorization"):
            return None
        return super().check_xsrf_cookie()

    def hub_service_name(self) -> str | None:
        model = self.current_user
        if model and model.get("kind") == "service":
            return model["name"]
        return None

    def principal(self) -> Principal:
        """The person calling, in one organization. Raises 401 when nobody is identified."""
        cached = getattr(self, "_principal", None)
        if cached is not None:
            return cached
        bearer, api_key = self._bearer(), self._api_key()
        with self.db() as session:
            if api_key is not None:
                resolved_key = resolve_api_key(session, api_key)
                if resolved_key is None:
                    raise AuthenticationRequired("Invalid, expired or revoked API key")
                principal = _principal_of(resolved_key.membership, via=API_KEY_VIA)
                principal = dataclasses.replace(principal, role=resolved_key.role, key_name=resolved_key.name)
            elif bearer:
                resolved = resolve_token(session, bearer)
                if resolved is None:
                    raise AuthenticationRequired("Invalid, expired or revoked token")
                token, membership = resolved
                if membership is None:  # an anonymous visitor's kernel (public link, embed URL)
                    principal = visitor_principal(session, token)
                    if principal is None:
                        raise AuthenticationRequired("Invalid, expired or revoked token")
                else:
                    principal = _principal_of(membership, via=token.kind.value)
            else:
                model = self.current_user
                if not model or model.get("kind") != "user":
                    raise AuthenticationRequired("Sign in through the Hub or present a Carnet token")
                principal = principal_for_email(
                    session,
                    model["name"],
                    requested_org=self._org_hint(),
                    settings=self.settings_obj,
                    before_own_password=self.request.method in self.open_before_own_password,
                )
        self._principal = principal
        return principal

    def audit(self, session, action: str, target: str = "", *, by: Principal | None = None, **details):
        """Record ``action`` by the calling principal (or ``by``: the person a Carnet service acts for) in
        ``session``, so it commits with the action itself. ``details`` must never hold secrets. Returns the
        AuditEvent."""
        principal = by or self.principal()
        return audit_record(
            session,
            org_id=principal.org_id,
            actor_id=principal.user_id,
            actor=f"api key {principal.key_name}" if principal.via == API_KEY_VIA else principal.email,
            action=action,
            target=target,
            details={**details, "via": principal.via},
            remote_addr=client_address(self.request, self.settings_obj.trusted_proxy_hops),
        )

    def _org_hint(self) -> str | None:
        return self.request.headers.get("X-Carnet-Org") or self.get_query_argument("org", None)

    # -- JSON ---------------------------------------------------------------------------------------
    def get_json_body(self) -> dict:
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValidationError(f"Request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValidationError("Request body must be a JSON object")
        return body

    def write_json(self, data, status: int = 200) -> None:
        """Buffer a JSON answer. It is sent when the handler method returns — after the ``with self.db()``
        block around it has committed — so a client never sees a success whose commit then fails."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(json.dumps(data, default=str))

    async def send_arrow(self, table: pa.Table) -> None:
        """Answer ``table`` as an Arrow IPC stream, batch by batch: the client starts reading while the rest
        is written, and the whole result is never copied into one more buffer."""
        self.set_header("Content-Type", ARROW_STREAM)
        if table.nbytes <= ARROW_STREAM_ABOVE_BYTES:
            # Small answers in one piece, with a Content-Length (no chunked encoding to get wrong).
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            self.finish(sink.getvalue().to_pybytes())
            return
        chunks = _Chunks()
        with pa.ipc.new_stream(pa.PythonFile(chunks, mode="w"), table.schema) as writer:
            for batch in table.to_batches(max_chunksize=ARROW_BATCH_ROWS):
                writer.write_batch(batch)
                for part in chunks.take():
                    self.write(part)
                await self.flush()
        for part in chunks.take():  # the end-of-stream marker
            self.write(part)
        self.finish()

    def finish(self, chunk=None):
        # Answered before the request's body was read (a 413 on its declared length): tornado closes the
        # connection after this answer. Saying so keeps the Hub's proxy, which keeps its connections to us
        # alive, from sending its next request down the closing socket and answering that with a 503.
        if not self._headers_written and getattr(self.request.connection, "_read_finished", True) is False:
            self.set_header("Connection", "close")
        return super().finish(chunk)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, CarnetError):
            body = exc.to_json()
        else:
            message = getattr(exc, "log_message", None) or HTTPStatus(status_code).phrase
            if status_code >= 500:
                message = "Internal server error"
            body = {"status": status_code, "message": message}
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body))

    def log_exception(self, typ, value, tb):
        path = without_path_secrets(self.request.path)  # no webhook or push secret in the log
        if isinstance(value, CarnetError):
            self.log.info("%s %s -> %s: %s", self.request.method, path, value.status, value)
        else:
            self.log.error(
                "Unhandled error on %s %s\n%s",
                self.request.method,
                path,
                "".join(traceback.format_exception(typ, value, tb)),
            )

    def _handle_request_exception(self, e):
        # Typed errors answer their own status; tornado would turn them into 500s.
        if isinstance(e, CarnetError):
            self.log_exception(*sys.exc_info())
            if not self._finished:
                self.send_error(e.status, exc_info=sys.exc_info())
            return
        super()._handle_request_exception(e)

    @property
    def log(self):
        return self.application.settings["log"]


class _Chunks:
    """A write-only file for pyarrow's IPC writer that keeps what was written until taken."""

    closed = False

    def __init__(self):
        self._parts: list[bytes] = []

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> list[bytes]:
        parts, self._parts = self._parts, []
        return parts


def _principal_of(membership: Membership, via: str) -> Principal:
    return Principal(
        user_id=membership.user_id,
        email=membership.user.email,
        org_id=membership.org_id,
        org_slug=membership.org.slug,
        role=membership.role,
        via=via,
    )


def principal_for_email(
    session,
    email: str,
    requested_org: str | None = None,
    via: str = "hub",
    *,
    settings=None,
    before_own_password: bool = False,
) -> Principal:
    """The person ``email`` in one organization. Refused (403) while they hold a one-time password, unless
    ``before_own_password`` (the few calls that let them see who they are and choose their own)."""
    user = session.scalar(select(User).where(User.email == email.lower()))
    if user is None or not user.is_active or not user.memberships:
        raise PermissionDenied("You are not a member of any organization")
    if not before_own_password:
        require_own_password(user, settings)
    memberships = user.memberships
    if requested_org:
        memberships = [m for m in memberships if m.org.slug == requested_org]
        if not memberships:
            raise NotFound(f"Unknown organization {requested_org!r}")
    if len(memberships) > 1:
        raise OrganizationChoiceRequired(sorted(m.org.slug for m in memberships))
    return _principal_of(memberships[0], via=via)


async def _call(method, handler, *args, **kwargs):
    """Call a handler method that may be sync or async."""
    result = method(handler, *args, **kwargs)
    if hasattr(result, "__await__"):
        result = await result
    return result


def authorized(action: str):
    """Permission decorator: the caller must be identified and allowed ``action`` in their org."""

    def decorator(method):
        method.__carnet_action__ = action

        @functools.wraps(method)
        async def wrapper(self, *args, **kwargs):
            principal = self.principal()
            if action in PEOPLE_ONLY_ACTIONS and principal.via != "hub":
                raise PermissionDenied(f"{action} is for people signed in through the Hub, not keys")
            if not principal.can(action):
                raise PermissionDenied(f"Your role ({principal.role}) does not allow {action}")
            return await _call(method, self, *args, **kwargs)

        wrapper.__carnet_action__ = action
        return wrapper

    return decorator


def service_only(*names: str):
    """Only the named Hub-managed Carnet services may call this handler method."""

    def decorator(method):
        @functools.wraps(method)
        async def wrapper(self, *args, **kwargs):
            service = self.hub_service_name()
            if service is None:
                if self._bearer() or self._api_key() is not None or self.current_user:
                    raise PermissionDenied("This endpoint is for Carnet's own services")
                raise AuthenticationRequired("This endpoint is for Carnet's own services")
            if service not in names:
                raise PermissionDenied(f"Service {service!r} may not call this endpoint")
            return await _call(method, self, *args, **kwargs)

        wrapper.__carnet_service_only__ = names
        return wrapper

    return decorator


class NotFoundHandler(BaseHandler):
    """Any unknown path under the API answers JSON 404."""

    def prepare(self):
        raise NotFound("No such API endpoint")

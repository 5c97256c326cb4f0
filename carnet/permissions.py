"""Who may do what: one table, read by the permission decorator on every API handler.

``ACTION_MIN_ROLE`` is the minimum organization role for each action when a person acts directly (browser,
Hub token, Studio kernel). Kernels of published apps and job runs act *for* an app: they may read data
through sources whatever the person's role (a viewer sees data only through apps), and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from carnet.db.models import Role, TokenKind, role_at_least
from carnet.errors import NotFound

ACTION_MIN_ROLE: dict[str, Role] = {
    "me:read": Role.viewer,
    "apps:list": Role.viewer,
    "apps:read": Role.viewer,
    "apps:publish": Role.analyst,
    "apps:share": Role.analyst,
    "apps:share_public": Role.studio,  # also needs the org setting allow_public_apps (carnet.sharing)
    "apps:unpublish": Role.analyst,
    "sources:list": Role.analyst,
    "sources:read_data": Role.analyst,
    "sources:create": Role.studio,
    "sources:manage": Role.studio,
    # The org's warehouse: analysts see its tables and load history; loading (and making push URLs) is
    # studio's, like creating sources.
    "warehouse:read": Role.analyst,
    "warehouse:load": Role.studio,
    # Connections hold server settings and credentials: for those who manage sources only.
    "connections:read": Role.studio,
    "connections:manage": Role.studio,
    "jobs:list": Role.analyst,
    "jobs:read": Role.analyst,
    "jobs:create": Role.analyst,
    # Changing a job (PATCH) and managing its webhook URL; a kind's own min_role also applies (load: studio).
    "jobs:update": Role.analyst,
    "jobs:run": Role.analyst,
    "jobs:delete": Role.analyst,
    # carnet.state of a job run (/job-state): only a job run's own token, whatever the person's role.
    "jobs:state": Role.viewer,
    "audit:read": Role.admin,
    "keys:manage": Role.admin,
    "users:manage": Role.admin,
    "groups:manage": Role.admin,
    "org:read": Role.viewer,
    "org:manage": Role.admin,
    # The org's own SMTP server (settings with a password, and test mails to any host): admins, people only.
    "org:mail": Role.admin,
    "me:update": Role.viewer,
}

APP_KERNEL_ACTIONS = frozenset({"me:read", "sources:list", "sources:read_data"})
APP_KERNEL_KINDS = frozenset({TokenKind.viewer_kernel, TokenKind.job})
# A job run's token acts for the job's owner: besides reading sources, the scheduler's job kinds read the
# warehouse (a burst's recipients table) and load it (data-load jobs) through the service, as far as the
# owner's CURRENT role allows (an owner demoted to analyst can no longer load). Viewer kernels cannot.
JOB_OWNER_ACTIONS = frozenset({"warehouse:read", "warehouse:load"})
# Kernels of anonymous visitors (public links, embed URLs; carnet.app_links): no person behind them, so no
# /me either; they list and read only their app's sources (``Principal.scope``).
ANONYMOUS_KERNEL_ACTIONS = frozenset({"sources:list", "sources:read_data"})
ANONYMOUS_KERNEL_KINDS = frozenset({TokenKind.public_app, TokenKind.embed, TokenKind.print_page})
API_KEY_VIA = "api_key"
# Only the token of a job run may do these (its run's job is the scope): never a person, key or app kernel.
JOB_RUN_ONLY_ACTIONS = frozenset({"jobs:state"})
# Only a person signed in through the Hub (browser or Hub token) may do these: never an API key (keys are for
# programs, key management is for people) nor a kernel's token, whatever the role.
PEOPLE_ONLY_ACTIONS = frozenset({"keys:manage", "org:mail"})


@dataclass(frozen=True)
class AppScope:
    """What an anonymous visitor's kernel may reach: one app's sources, read with these attribute values
    (row rules apply; none for a public link) and these variables (fixed: they override the kernel's)."""

    app_id: int
    sources: frozenset[str]
    attributes: dict = field(default_factory=dict)
    variables: dict = field(default_factory=dict)

    def allows(self, source_name: str) -> bool:
        return source_name in self.sources


@dataclass(frozen=True)
class Principal:
    """Who is calling: a person acting in one organization, through some credential."""

    user_id: int
    email: str
    org_id: int
    org_slug: str
    role: Role
    via: str  # 'hub' (browser cookie or Hub token), 'api_key' (role capped by the key) or a TokenKind value
    key_name: str = ""  # the API key's name when via == 'api_key'
    scope: AppScope | None = None  # set only for anonymous visitors' kernels (public_app, embed)

    def can(self, action: str) -> bool:
        if action not in ACTION_MIN_ROLE:
            raise KeyError(f"Unknown action {action!r}: add it to ACTION_MIN_ROLE")
        if action in JOB_RUN_ONLY_ACTIONS:
            return self.via == TokenKind.job
        if self.via in ANONYMOUS_KERNEL_KINDS:
            return self.scope is not None and action in ANONYMOUS_KERNEL_ACTIONS
        if self.via == TokenKind.job and action in JOB_OWNER_ACTIONS:
            return role_at_least(self.role, ACTION_MIN_ROLE[action])
        if self.via in APP_KERNEL_KINDS:
            return action in APP_KERNEL_ACTIONS
        if action in PEOPLE_ONLY_ACTIONS and self.via != "hub":
            return False
        return role_at_least(self.role, ACTION_MIN_ROLE[action])


def refuse_outside_scope(principal: Principal, name: str) -> None:
    """An anonymous visitor's kernel naming a source its app does not read: exactly like an unknown one."""
    scope = getattr(principal, "scope", None)
    if scope is not None and not scope.allows(name):
        raise NotFound(f"No source named {name!r}")


def scoped_variables(principal: Principal, variables):
    """An embed URL's signed variables win over whatever the visitor's kernel sends."""
    scope = getattr(principal, "scope", None)
    if scope is None or not scope.variables:
        return variables
    return {**(variables or {}), **scope.variables}

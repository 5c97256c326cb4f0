"""Who may open an app, sharing it with people and viewer groups, and unpublishing it.

Visibility of an app (``App.visibility``):

- ``org``: every member of the app's organization may open it (the default);
- ``restricted``: only the people it is shared with, directly or through a viewer group of the org
  (``app_shares``), plus, always, the org's admins and the person who published its current version
  (as in Metabase/Superset, admins see everything; a publisher never locks themselves out);
- ``public``: recorded choice of a studio user or an admin, allowed only when the organization's setting
  ``allow_public_apps`` is true. Every member of the org may open it. Anonymous visitors need the app's
  public link or a signed embed URL (``carnet.app_links``), made separately by studio users and admins.

The rule lives in one place, ``openable_clause``: a SQL condition on ``App`` used both for lists (one query,
nothing filtered in Python) and for one app (``find_openable_app``). An app the caller may not open is a
``NotFound`` with exactly the body of an unknown id, so its existence is never revealed.
"""

from __future__ import annotations

import shutil

from sqlalchemy import delete, exists, or_, select, true

from carnet.db.models import (
    App,
    AppPublicLink,
    AppShare,
    Job,
    JobRun,
    Membership,
    Organization,
    Role,
    Token,
    User,
    ViewerGroup,
    ViewerGroupMember,
)
from carnet.errors import Conflict, NotFound, PermissionDenied, ValidationError
from carnet.permissions import Principal
from carnet.validation import parse_id

VISIBILITIES = ("org", "restricted", "public")
MAX_SHARES = 1000  # per list (users, groups): a share list longer than this is a mistake or an attack
SHARING_FIELDS = frozenset({"visibility", "users", "groups"})
PUBLIC_SETTING = "allow_public_apps"
PUBLIC_LINK_NOTE = (
    "Anonymous visitors need the app's public link: make one with POST /api/v1/apps/<id>/public-link "
    "(shown once; see carnet.app_links)."
)


def openable_clause(principal: Principal):
    """The one rule: a SQL condition true for the apps ``principal`` may open (in any org: callers also
    filter on ``App.org_id``, so another org's app stays unknown)."""
    if principal.role == Role.admin:
        return true()
    user_id = principal.user_id
    direct = exists().where(AppShare.app_id == App.id, AppShare.user_id == user_id)
    via_group = exists().where(
        AppShare.app_id == App.id,
        AppShare.group_id == ViewerGroupMember.group_id,
        ViewerGroupMember.user_id == user_id,
    )
    return or_(App.visibility != "restricted", App.published_by == user_id, direct, via_group)


def openable_apps(session, principal: Principal) -> list[App]:
    """The published apps of the principal's org that they may open, by title."""
    query = select(App).where(
        App.org_id == principal.org_id, App.current_version > 0, openable_clause(principal)
    )
    return list(session.scalars(query.order_by(App.title)).all())


def find_openable_app(session, principal: Principal, app_id) -> App:
    """The app, or NotFound("No such app"): the same whether unknown, another org's, or not shared."""
    app_id = parse_id(app_id, "No such app")
    app = session.scalar(
        select(App).where(
            App.id == app_id,
            App.org_id == principal.org_id,
            App.current_version > 0,
            openable_clause(principal),
        )
    )
    if app is None:
        raise NotFound("No such app")
    return app


def member_reader(session, user_id: int, org_id: int, via: str) -> Principal | None:
    """The principal an active member of ``org_id`` reads as when nobody is signed in (a job's owner, the
    person a print page reads as); None when they left the organization or were disabled."""
    membership = session.scalar(
        select(Membership).where(Membership.user_id == user_id, Membership.org_id == org_id)
    )
    if membership is None or not membership.user.is_active:
        return None
    return Principal(
        user_id=membership.user_id,
        email=membership.user.email,
        org_id=org_id,
        org_slug="",
        role=membership.role,
        via=via,
    )


def may_open(session, principal: Principal, app: App) -> bool:
    """``find_openable_app`` as a yes/no, for code that already holds the app."""
    try:
        find_openable_app(session, principal, app.id)
    except NotFound:
        return False
    return True


# -- reading and changing who an app is shared with -------------------------------------------------------
def sharing_json(session, app: App) -> dict:
    users = session.execute(
        select(User.id, User.email)
        .join(AppShare, AppShare.user_id == User.id)
        .where(AppShare.app_id == app.id)
        .order_by(User.email)
    ).all()
    groups = session.execute(
        select(ViewerGroup.id, ViewerGroup.name)
        .join(AppShare, AppShare.group_id == ViewerGroup.id)
        .where(AppShare.app_id == app.id)
        .order_by(ViewerGroup.name)
    ).all()
    answer = {
        "app_id": app.id,
        "visibility": app.visibility,
        "users": [{"id": uid, "email": email} for uid, email in users],
        "groups": [{"id": gid, "name": name} for gid, name in groups],
    }
    if app.visibility == "public":
        answer["public_url"] = None
        answer["note"] = PUBLIC_LINK_NOTE
    return answer


def _entries(body: dict, name: str) -> list:
    values = body.get(name, [])
    if not isinstance(values, list):
        raise ValidationError(f"{name} must be a list", field=name)
    if len(values) > MAX_SHARES:
        raise ValidationError(f"{name} may hold at most {MAX_SHARES} entries", field=name)
    return values


def _resolve_users(session, org_id: int, values: list) -> dict[int, str]:
    """Ids or emails -> {user id: email} of members of ``org_id``; anything else is a 400 naming it
    (people of another org read exactly like unknown ones)."""
    ids, emails, bad = set(), set(), []
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            ids.add(value)
        elif isinstance(value, str) and value.strip():
            emails.add(value.strip().lower())
        else:
            bad.append(value)
    if bad:
        raise ValidationError(f"users must be ids or emails, not {bad[:5]!r}", field="users")
    found: dict[int, str] = {}
    if ids or emails:
        rows = session.execute(
            select(User.id, User.email)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.org_id == org_id, or_(User.id.in_(ids), User.email.in_(emails)))
        ).all()
        found = dict(rows)
    emails_found = set(found.values())

    def missing(value) -> bool:
        return value not in found if isinstance(value, int) else value.strip().lower() not in emails_found

    unknown = list(dict.fromkeys(v for v in values if missing(v)))
    if unknown:
        named = ", ".join(map(str, unknown[:20]))
        raise ValidationError(f"Not people of this organization: {named}", field="users", users=unknown)
    return found


def _resolve_groups(session, org_id: int, values: list) -> dict[int, str]:
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        raise ValidationError(f"groups must be group ids, not {bad[:5]!r}", field="groups")
    found = (
        dict(
            session.execute(
                select(ViewerGroup.id, ViewerGroup.name).where(
                    ViewerGroup.org_id == org_id, ViewerGroup.id.in_(set(values))
                )
            ).all()
        )
        if values
        else {}
    )
    unknown = list(dict.fromkeys(v for v in values if v not in found))
    if unknown:
        raise ValidationError(
            f"Not viewer groups of this organization: {', '.join(map(str, unknown[:20]))}",
            field="groups",
            groups=unknown,
        )
    return found


def set_sharing(session, principal: Principal, app: App, body: dict) -> dict:
    """Replace the app's visibility and share lists with ``body``; returns what to audit.

    Nothing is changed unless everything is valid: unknown fields (``org_id``, ``published_by``...),
    unknown or other orgs' people and groups are refused before any write.
    """
    unknown = sorted(set(body) - SHARING_FIELDS)
    if unknown:
        raise ValidationError(f"These fields cannot be set here: {', '.join(unknown)}", field=unknown[0])
    visibility = body.get("visibility")
    if visibility not in VISIBILITIES:
        raise ValidationError(f"visibility must be one of {', '.join(VISIBILITIES)}", field="visibility")
    users = _resolve_users(session, app.org_id, _entries(body, "users"))
    groups = _resolve_groups(session, app.org_id, _entries(body, "groups"))
    if visibility == "public":
        if not principal.can("apps:share_public"):
            raise PermissionDenied("Only studio users and admins may make an app public")
        org = session.get(Organization, app.org_id)
        if not (org.settings or {}).get(PUBLIC_SETTING, False):
            raise PermissionDenied(
                f"Public apps are turned off for this organization (organization setting {PUBLIC_SETTING})"
            )
    before = app.visibility
    session.execute(delete(AppShare).where(AppShare.app_id == app.id))
    session.add_all(AppShare(app_id=app.id, user_id=uid) for uid in users)
    session.add_all(AppShare(app_id=app.id, group_id=gid) for gid in groups)
    app.visibility = visibility
    session.flush()
    return {
        "visibility": {"from": before, "to": visibility},
        "users": sorted(users.values()),
        "groups": [{"id": gid, "name": groups[gid]} for gid in sorted(groups)],
    }


# -- unpublishing ------------------------------------------------------------------------------------------
def parse_force(value: str | None) -> bool:
    if value is None or value.lower() in ("false", "0", ""):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise ValidationError("force must be true or false", field="force")


def unpublish(session, settings, app: App, *, force: bool = False) -> dict:
    """Delete the app, its versions and shares. Jobs that run it block this (409 listing them) unless
    ``force``: then they and their runs are deleted too. Returns what to audit and which folders to remove
    once the transaction has committed (``folders``)."""
    jobs = session.execute(
        select(Job.id, Job.name).where(Job.app_id == app.id, Job.org_id == app.org_id).order_by(Job.id)
    ).all()
    listed = [{"id": job_id, "name": name} for job_id, name in jobs]
    if jobs and not force:
        raise Conflict(
            f"{len(jobs)} job(s) run this app: delete them first, or unpublish with ?force=true to delete "
            "them too",
            jobs=listed,
        )
    job_ids = [job_id for job_id, _ in jobs]
    folders = [settings.published_dir / str(app.org_id) / str(app.id)]
    folders += [settings.runs_dir / str(app.org_id) / str(job_id) for job_id in job_ids]
    if job_ids:
        # Explicit rather than relying on ON DELETE CASCADE, so every database behaves the same.
        session.execute(delete(JobRun).where(JobRun.job_id.in_(job_ids)))
        session.execute(delete(Job).where(Job.id.in_(job_ids)))
    session.execute(delete(AppShare).where(AppShare.app_id == app.id))
    # Its public link and its visitors' kernel tokens end with it (carnet.app_links).
    session.execute(delete(AppPublicLink).where(AppPublicLink.app_id == app.id))
    session.execute(delete(Token).where(Token.app_id == app.id))
    details = {"slug": app.slug, "title": app.title, "versions": app.current_version, "jobs_deleted": listed}
    session.delete(app)  # its versions go with it (ORM cascade)
    session.flush()
    return {"details": details, "folders": folders}


def remove_folders(folders) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)

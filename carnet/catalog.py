"""The gallery's listing: search, tag filter and favourites over the apps a person may open.

Who may open what stays ``carnet.sharing.openable_apps`` (the one rule); this module only narrows and orders
its answer. The narrowing is done in Python: an organization has at most a few hundred apps, and tags are a
JSON list that the three supported databases would each search differently.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from carnet.db.models import App, AppFavourite, AppVersion
from carnet.errors import ValidationError
from carnet.permissions import Principal
from carnet.publishing import normalize_tag
from carnet.sharing import openable_apps

MAX_QUERY = 200


@dataclass(frozen=True)
class GalleryFilter:
    text: str = ""  # matched in title, description and tags, case-insensitively
    tags: tuple[str, ...] = ()  # every one must be among the app's tags
    favourites_only: bool = False


def parse_filter(q: str | None, tags: list[str], favourites: str | None) -> GalleryFilter:
    """The query arguments ``q``, ``tag`` (repeatable) and ``favourites`` (true/false), checked."""
    text = (q or "").strip()
    if len(text) > MAX_QUERY:
        raise ValidationError(f"q must be at most {MAX_QUERY} characters", field="q")
    if favourites is None or favourites.lower() in ("", "false", "0"):
        only = False
    elif favourites.lower() in ("true", "1"):
        only = True
    else:
        raise ValidationError("favourites must be true or false", field="favourites")
    return GalleryFilter(text.casefold(), tuple(normalize_tag(t, "tag") for t in tags), only)


def favourite_ids(session, user_id: int) -> set[int]:
    return set(session.scalars(select(AppFavourite.app_id).where(AppFavourite.user_id == user_id)))


def version_counts(session, app_ids: list[int]) -> dict[int, int]:
    if not app_ids:
        return {}
    rows = session.execute(
        select(AppVersion.app_id, func.count(AppVersion.id))
        .where(AppVersion.app_id.in_(app_ids))
        .group_by(AppVersion.app_id)
    ).all()
    return dict(rows)


def _matches(app: App, wanted: GalleryFilter, favourites: set[int]) -> bool:
    tags = app.tags or []
    if wanted.favourites_only and app.id not in favourites:
        return False
    if any(tag not in tags for tag in wanted.tags):
        return False
    if wanted.text:
        haystacks = [app.title, app.description or "", *tags]
        return any(wanted.text in hay.casefold() for hay in haystacks)
    return True


def gallery_apps(session, principal: Principal, wanted: GalleryFilter) -> tuple[list[App], set[int]]:
    """The apps ``principal`` may open that match ``wanted``: favourites first, then by title. Also returns
    the person's favourite ids (for the listing's ``favourite`` flag)."""
    favourites = favourite_ids(session, principal.user_id)
    apps = [app for app in openable_apps(session, principal) if _matches(app, wanted, favourites)]
    apps.sort(key=lambda app: (app.id not in favourites, app.title.casefold(), app.id))
    return apps, favourites


def set_favourite(session, user_id: int, app: App, on: bool) -> bool:
    """Mark or unmark (idempotent). Returns whether anything changed."""
    existing = session.scalar(
        select(AppFavourite).where(AppFavourite.app_id == app.id, AppFavourite.user_id == user_id)
    )
    if on and existing is None:
        try:
            with session.begin_nested():  # two tabs marking it at once: the second finds it done
                session.add(AppFavourite(app_id=app.id, user_id=user_id))
        except IntegrityError:
            return False
        return True
    if not on and existing is not None:
        session.execute(delete(AppFavourite).where(AppFavourite.id == existing.id))
        return True
    return False

"""Viewer groups: named sets of people of one organization (apps are shared with them later).

Names are unique per organization up to look-alikes: ``name_key`` (NFKC, case-folded, each character that
Unicode's confusables data says reads like a Latin letter mapped to it, whitespace collapsed) is unique per
org, so "Sales" and "Ѕаlеѕ" (Cyrillic) cannot both exist.
"""

from __future__ import annotations

import functools
import unicodedata

from confusable_homoglyphs.categories import alias as script_of
from confusable_homoglyphs.confusables import confusables_data
from sqlalchemy import select

from carnet.db.models import Membership, User, ViewerGroup, ViewerGroupMember
from carnet.errors import Conflict, NotFound, ValidationError
from carnet.validation import parse_id, refuse_hidden_characters, validate_email

MAX_NAME = 100
EDITABLE_FIELDS = frozenset({"name"})
_DIRECTION_MARKS = "\u200e\u200f"  # the data wraps right-to-left glyphs in them


@functools.cache
def _latin_look_alikes() -> dict[int, str]:
    """For each non-ASCII character of the confusables data (Unicode TR39, as packaged by
    confusable-homoglyphs): the ASCII text it reads as, else (for non-Latin scripts) a Latin letter.

    ASCII characters are left alone: mapping "I" or "1" to "l" would also merge names that differ only in
    case ("Interns"/"interns" must stay one key, and both are plain ASCII, easy to tell apart)."""
    table = {}
    for char in confusables_data:
        if len(char) != 1 or char.isascii():
            continue
        # A letter and its other case share one entry, so the key does not depend on case (small Cyrillic
        # "м" has no Latin look-alike in the data, its capital "М" reads as "M").
        candidates = {
            g["c"].strip(_DIRECTION_MARKS)
            for form in {char, char.upper(), char.lower()}
            for g in confusables_data.get(form, ())
        }
        candidates.discard("")
        ascii_ = [c for c in candidates if c.isascii() and c.isprintable() and not c.isspace()]
        latin = [c for c in candidates if len(c) == 1 and script_of(c) == "LATIN"]
        # Letters before digits and signs; the shortest, then the lowest code point: a stable choice.
        pick = ascii_ or (latin if script_of(char) != "LATIN" else [])
        if pick:
            table[ord(char)] = min(pick, key=lambda c: (not c.isalpha(), len(c), c)).casefold()
    return table


def name_key(name: str) -> str:
    """The skeleton two names share when they read the same."""
    text = unicodedata.normalize("NFKC", name).casefold()
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Mn"))
    text = text.translate(_latin_look_alikes())
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def parse_group_name(value) -> tuple[str, str]:
    """The stored name (NFKC, trimmed) and its key; refuses empty, too long and control characters."""
    if not isinstance(value, str):
        raise ValidationError("name must be text", field="name")
    name = " ".join(unicodedata.normalize("NFKC", value).split())
    if not name:
        raise ValidationError("name must not be empty", field="name")
    if len(name) > MAX_NAME:
        raise ValidationError(f"name must be at most {MAX_NAME} characters", field="name")
    refuse_hidden_characters(name, "name")
    return name, name_key(name)


def get_group(session, org_id: int, group_id) -> ViewerGroup:
    """Another organization's group is simply not found."""
    group_id = parse_id(group_id, "No such group")
    group = session.scalar(
        select(ViewerGroup).where(ViewerGroup.id == group_id, ViewerGroup.org_id == org_id)
    )
    if group is None:
        raise NotFound("No such group")
    return group


def list_groups(session, org_id: int) -> list[ViewerGroup]:
    return list(
        session.scalars(select(ViewerGroup).where(ViewerGroup.org_id == org_id).order_by(ViewerGroup.name))
    )


def _check_free(session, org_id: int, key: str, group_id: int | None = None) -> None:
    query = select(ViewerGroup).where(ViewerGroup.org_id == org_id, ViewerGroup.name_key == key)
    if group_id is not None:
        query = query.where(ViewerGroup.id != group_id)
    existing = session.scalar(query)
    if existing is not None:
        raise Conflict(
            f"A group named {existing.name!r} already exists (same or look-alike name)", field="name"
        )


def create_group(session, org_id: int, name) -> ViewerGroup:
    name, key = parse_group_name(name)
    _check_free(session, org_id, key)
    group = ViewerGroup(org_id=org_id, name=name, name_key=key)
    session.add(group)
    session.flush()
    return group


def update_group(session, group: ViewerGroup, changes: dict) -> dict:
    unknown = sorted(set(changes) - EDITABLE_FIELDS)
    if unknown:
        raise ValidationError(f"These fields cannot be changed here: {', '.join(unknown)}", field=unknown[0])
    changed = {}
    if "name" in changes:
        name, key = parse_group_name(changes["name"])
        if name != group.name:
            _check_free(session, group.org_id, key, group.id)
            changed["name"] = {"from": group.name, "to": name}
            group.name, group.name_key = name, key
    session.flush()
    return changed


def set_members(session, group: ViewerGroup, emails) -> dict:
    """Make the group hold exactly these people (emails of people of the group's org)."""
    if not isinstance(emails, list):
        raise ValidationError("users must be a list of email addresses", field="users")
    wanted = list(dict.fromkeys(validate_email(e, field="users") for e in emails))
    found = (
        dict(
            session.execute(
                select(User.email, User.id)
                .join(Membership, Membership.user_id == User.id)
                .where(Membership.org_id == group.org_id, User.email.in_(wanted))
            ).all()
        )
        if wanted
        else {}
    )
    strangers = [e for e in wanted if e not in found]
    if strangers:
        raise ValidationError(
            f"Not people of this organization: {', '.join(strangers)}", field="users", users=strangers
        )
    current = {m.user.email: m for m in group.members}
    added = [e for e in wanted if e not in current]
    removed = sorted(e for e in current if e not in found)
    for email in removed:
        group.members.remove(current[email])
    for email in added:
        group.members.append(ViewerGroupMember(user_id=found[email]))
    session.flush()
    return {"added": added, "removed": removed}


def delete_group(session, group: ViewerGroup) -> None:
    session.delete(group)
    session.flush()


def group_json(group: ViewerGroup) -> dict:
    return {
        "id": group.id,
        "name": group.name,
        "members": sorted(m.user.email for m in group.members),
        "created_at": group.created_at.isoformat(),
    }

"""Viewer groups: named sets of people of one organization (apps are shared with them later).

Names are unique per organization up to look-alikes: ``name_key`` (NFKC, case-folded, Cyrillic and Greek
letters that read like Latin ones mapped to them, whitespace collapsed) is unique per org, so "Sales" and
"Ѕаlеѕ" (Cyrillic) cannot both exist.
"""

from __future__ import annotations

import unicodedata

from sqlalchemy import select

from carnet.db.models import Membership, User, ViewerGroup, ViewerGroupMember
from carnet.errors import Conflict, NotFound, ValidationError
from carnet.validation import parse_id, validate_email

MAX_NAME = 100
EDITABLE_FIELDS = frozenset({"name"})

# Lower-case Cyrillic and Greek letters (after NFKC + casefold) that read like a Latin letter.
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "н": "h", "і": "i",
        "ї": "i", "ј": "j", "к": "k", "ӏ": "l", "м": "m", "п": "n", "о": "o", "р": "p", "ԛ": "q",
        "г": "r", "ѕ": "s", "т": "t", "ц": "u", "ѵ": "v", "ԝ": "w", "х": "x", "у": "y", "з": "3",
        # Greek
        "α": "a", "β": "b", "ϲ": "c", "ε": "e", "η": "n", "ι": "i", "ϳ": "j", "κ": "k", "μ": "u",
        "ν": "v", "ο": "o", "ρ": "p", "σ": "o", "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ω": "w",
        "ζ": "z",
        # Latin look-alikes
        "ı": "i", "ɑ": "a", "ɡ": "g",
    }
)  # fmt: skip


def name_key(name: str) -> str:
    """The skeleton two names share when they read the same."""
    text = unicodedata.normalize("NFKC", name).casefold()
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Mn"))
    text = text.translate(_CONFUSABLES)
    return " ".join(unicodedata.normalize("NFKC", text).split())


def parse_group_name(value) -> tuple[str, str]:
    """The stored name (NFKC, trimmed) and its key; refuses empty, too long and control characters."""
    if not isinstance(value, str):
        raise ValidationError("name must be text", field="name")
    name = " ".join(unicodedata.normalize("NFKC", value).split())
    if not name:
        raise ValidationError("name must not be empty", field="name")
    if len(name) > MAX_NAME:
        raise ValidationError(f"name must be at most {MAX_NAME} characters", field="name")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs", "Cn") for ch in name):
        raise ValidationError("name must not hold control or invisible characters", field="name")
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

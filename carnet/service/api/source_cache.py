"""/api/v1/sources/{name}/cache: a source's result-cache policy (PUT) and its manual invalidation (DELETE)."""

from __future__ import annotations

import asyncio

from carnet.errors import ValidationError
from carnet.query.cache import MAX_TTL_SECONDS, POLICIES, invalidate_source
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.sources import find_source


def check_policy(body: dict) -> tuple[str, int | None]:
    """(policy, ttl_seconds) from a PUT body; ttl_seconds only, and always, with the ttl policy."""
    unknown = sorted(set(body) - {"policy", "ttl_seconds"})
    if unknown:
        raise ValidationError(f"Unknown field {unknown[0]!r}", field=unknown[0])
    policy = body.get("policy")
    if policy not in POLICIES:
        raise ValidationError(f"policy must be one of {', '.join(POLICIES)}", field="policy")
    ttl = body.get("ttl_seconds")
    if policy != "ttl":
        if ttl is not None:
            raise ValidationError("ttl_seconds is only for the ttl policy", field="ttl_seconds")
        return policy, None
    # bool is an int in Python: refuse true/false explicitly.
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL_SECONDS:
        raise ValidationError(
            f"The ttl policy needs ttl_seconds, a whole number from 1 to {MAX_TTL_SECONDS}",
            field="ttl_seconds",
        )
    return policy, ttl


class SourceCacheHandler(BaseHandler):
    @authorized("sources:manage")
    async def put(self, name):
        principal = self.principal()
        policy, ttl = check_policy(self.get_json_body())
        with self.db() as session:
            source = find_source(session, principal.org_id, name)
            source.cache_policy, source.cache_ttl_seconds = policy, ttl
            source_id = source.id
            self.audit(
                session,
                "source.cache.policy",
                f"source/{source.name}",
                source_id=source.id,
                policy=policy,
                ttl_seconds=ttl,
            )
            self.write_json({"policy": policy, "ttl_seconds": ttl})
        # Entries made under the former policy would outlive the new one's rules (e.g. a new, shorter TTL).
        await asyncio.to_thread(invalidate_source, self.settings_obj, principal.org_id, source_id)

    @authorized("sources:manage")
    async def delete(self, name):
        principal = self.principal()
        with self.db() as session:
            source = find_source(session, principal.org_id, name)
            source_id = source.id
            self.audit(session, "source.cache.invalidate", f"source/{source.name}", source_id=source.id)
        await asyncio.to_thread(invalidate_source, self.settings_obj, principal.org_id, source_id)
        self.set_status(204)


default_handlers = [
    (API_PREFIX + r"sources/(?P<name>[^/]+)/cache", SourceCacheHandler),
]

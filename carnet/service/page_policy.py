"""The Content-Security-Policy of the service's HTML pages (gallery, organization choice, admin).

They need no script: the only script is the admin page's confirmation prompts (``onsubmit="return
confirm(...)"``), allowed one by one by the hash of their exact text (``'unsafe-hashes'``), read from the
templates so the list cannot drift. App titles, descriptions and tags are escaped by the templates; the policy
is the second layer: any other inline script, handler or ``javascript:`` URL is refused by the browser.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"
# An inline event handler written literally in a template (no Jinja expression inside).
_HANDLER = re.compile(r"\son[a-z]+=\"([^\"{}]*)\"")


@cache
def template_handler_hashes() -> tuple[str, ...]:
    texts = sorted({m for path in TEMPLATES.glob("*.html") for m in _HANDLER.findall(path.read_text())})
    return tuple(
        "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'" for text in texts
    )


def page_policy(frame_ancestors: str = "'none'") -> str:
    hashes = template_handler_hashes()
    script = f"'unsafe-hashes' {' '.join(hashes)}" if hashes else "'none'"
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {script}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "form-action 'self'",
            "base-uri 'none'",
            f"frame-ancestors {frame_ancestors}",
        ]
    )

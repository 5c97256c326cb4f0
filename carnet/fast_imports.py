"""Keeps jsonschema from loading ``rfc3987_syntax`` in Carnet's processes.

jsonschema (imported by nbformat, papermill and jupyter_events: so by the Hub, the Viewer, Studio servers,
the service, the scheduler and every notebook run) imports ``rfc3987_syntax`` when it is installed
(jsonschema's ``format-nongpl`` extra, which nbformat asks for, pulls it in), and that module compiles ~35
Earley parsers at import: 2-3 s of CPU at every process start, measured on this machine
(python-jsonschema/jsonschema#1428). It serves only jsonschema's ``iri`` / ``iri-reference`` format checks,
which no Jupyter or Carnet schema uses. Marked absent before jsonschema is imported, jsonschema skips those
two checks and validates everything else as before. ``import carnet`` does it (carnet/__init__.py); the Hub
and the Jupyter servers start through ``python -m carnet.hub_config.launch`` so that it comes first there
too.
"""

from __future__ import annotations

import sys

SLOW_MODULE = "rfc3987_syntax"


def skip_iri_format_parser() -> bool:
    """Marks ``rfc3987_syntax`` as absent unless something imported it already; True if it is skipped."""
    if SLOW_MODULE not in sys.modules:
        sys.modules[SLOW_MODULE] = None  # `import rfc3987_syntax` now raises ImportError: jsonschema skips it
    return sys.modules[SLOW_MODULE] is None

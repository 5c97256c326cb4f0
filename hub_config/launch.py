"""``python -m carnet.hub_config.launch {hub,singleuser} [args]``: JupyterHub (``carnet hub``) or
jupyterhub-singleuser (the Viewer service, Studio servers), the same programs as the ``jupyterhub`` and
``jupyterhub-singleuser`` commands, started without jsonschema's slow IRI parser (carnet/fast_imports.py):
~2.5 s less CPU and wall time at each start; the Hub starts its services one after the other, so a stack
starts that much faster per service too."""

from __future__ import annotations

import sys

from carnet.fast_imports import skip_iri_format_parser

PROGRAMS = {"hub": "jupyterhub", "singleuser": "jupyterhub-singleuser"}


def main(argv: list[str] | None = None):
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in PROGRAMS:
        raise SystemExit(f"usage: python -m carnet.hub_config.launch {{{','.join(PROGRAMS)}}} [args]")
    skip_iri_format_parser()
    program = args.pop(0)
    sys.argv = [PROGRAMS[program], *args]  # both programs read their options from sys.argv
    if program == "hub":
        from jupyterhub.app import main as run
    else:
        from jupyterhub.singleuser import main as run
    return run()


if __name__ == "__main__":
    sys.exit(main())

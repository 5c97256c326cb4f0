"""Carnet: a Jupyter-native business-intelligence platform.

The root package holds what the parts share (settings, database models, errors, the API client).
Outside notebooks, ``carnet.Client(url, api_key)`` reads an organization's data with an API key.
In a notebook, ``import carnet`` gives the kernel helpers: ``carnet.sources``, ``carnet.warehouse`` and
``carnet.filters`` (filter values in the app's URL) and ``carnet.dash`` (dashboard blocks), and in a job
run ``carnet.params``, ``carnet.state`` and ``carnet.alert(...)`` (kernel_helpers/jobs.py); they are
loaded lazily so that the Hub and the services, which also import ``carnet``, do not pay for pandas.
"""

from carnet.fast_imports import skip_iri_format_parser

# Before anything imports jsonschema: ~2-3 s less at every start of a Carnet process (carnet/fast_imports.py).
skip_iri_format_parser()

__version__ = "0.1.0"

_KERNEL_ATTRIBUTES = {"sources", "warehouse", "filters", "dash", "params", "state", "alert"}


def __getattr__(name):
    if name in _KERNEL_ATTRIBUTES:
        from carnet import kernel_helpers

        return getattr(kernel_helpers, name)
    if name == "Client":
        from carnet.client import Client

        return Client
    raise AttributeError(f"module 'carnet' has no attribute {name!r}")

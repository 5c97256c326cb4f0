"""Helpers for notebooks: ``import carnet; carnet.sources.list(); carnet.sources["orders"].df()``.

They work the same in a Studio kernel, a Viewer kernel and a job run: each gets ``CARNET_API_URL`` and a
``CARNET_TOKEN`` bound to one person in one organization, and every call goes through the Carnet API.
No credential of a data source ever reaches the kernel.
"""

from carnet.kernel_helpers import filters
from carnet.kernel_helpers.jobs import JobStateStore, RunParameters, alert
from carnet.kernel_helpers.sources import Source, SourceCollection
from carnet.kernel_helpers.warehouse import Table, Warehouse

sources = SourceCollection()
warehouse = Warehouse()  # carnet.warehouse.write(df, "sales", mode="replace")
# In a job run (kernel_helpers/jobs.py): its parameters, the job's state between runs, and its alert.
params = RunParameters()
state = JobStateStore()

__all__ = [
    "Source",
    "SourceCollection",
    "Table",
    "Warehouse",
    "alert",
    "dash",
    "filters",
    "params",
    "sources",
    "state",
    "warehouse",
]


def __getattr__(name):
    # carnet.dash imports ipywidgets and plotly helpers: only for notebooks that use it.
    if name == "dash":
        import importlib

        return importlib.import_module("carnet.kernel_helpers.dash")
    raise AttributeError(f"module 'carnet.kernel_helpers' has no attribute {name!r}")

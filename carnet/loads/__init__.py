"""Loads into each organization's warehouse: atomic replace, append, upsert/delete by key, batches,
forced types, and the load history. See ``engine`` for the concurrency rules."""

from carnet.loads.engine import LoadResult, batch, load_table, warehouse_tables
from carnet.loads.history import load_history

__all__ = ["LoadResult", "batch", "load_history", "load_table", "warehouse_tables"]

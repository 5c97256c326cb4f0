"""Source kinds beyond the warehouse table (which lives in ``carnet.sources`` with the registry): SQL
table and query (``sql``), REST JSON (``rest``), Google Analytics 4 (``ga4``) and derived sources
(``derived``). Each is registered through the ``carnet.source_kinds`` entry points and runs only in the
Carnet service."""

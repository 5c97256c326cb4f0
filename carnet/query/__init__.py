"""The query service: structured query specs (``spec``), queries on one source and SQL across sources
(``service``, placeholders in ``placeholders``, whole-query pushdown to one SQL server in ``pushdown``) and
the result cache (``cache`` over ``cache_backends``)."""

"""REST API v1: one module per resource, each ending in ``default_handlers``."""

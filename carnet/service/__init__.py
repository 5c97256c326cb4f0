"""The Carnet service: a Hub-managed process that owns the platform's state and serves the REST API."""

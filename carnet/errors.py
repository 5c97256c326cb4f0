"""Typed errors. Each carries the HTTP status the REST API answers with and a message safe to show."""


class CarnetError(Exception):
    """Base class: ``status`` is the HTTP code, ``message`` is shown to the caller as is."""

    status = 500

    def __init__(self, message: str, **fields):
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_json(self) -> dict:
        return {"status": self.status, "message": self.message, **self.fields}


class ValidationError(CarnetError):
    """Malformed or invalid input."""

    status = 400


class AuthenticationRequired(CarnetError):
    status = 401


class PermissionDenied(CarnetError):
    status = 403


class NotFound(CarnetError):
    """Unknown id, or an id belonging to another organization: both answer the same body."""

    status = 404


class Conflict(CarnetError):
    status = 409


class MissingDriver(CarnetError):
    """An optional dependency is not installed; the message names the extra to install."""

    status = 400

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"The Python package {module!r} is not installed: pip install carnet[{extra}]",
            module=module,
            extra=extra,
        )

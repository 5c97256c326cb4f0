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


class OrganizationChoiceRequired(ValidationError):
    """The person belongs to several organizations and the request did not say which (``?org=<slug>``);
    ``orgs`` lists their organizations' slugs so that a page can offer the choice."""

    def __init__(self, orgs: list[str]):
        super().__init__("You belong to several organizations: choose one with ?org=<slug>", orgs=orgs)


class AuthenticationRequired(CarnetError):
    status = 401


class PermissionDenied(CarnetError):
    status = 403


class PasswordChangeRequired(PermissionDenied):
    """The person signed in with a one-time password and must choose their own before anything else."""


class NotFound(CarnetError):
    """Unknown id, or an id belonging to another organization: both answer the same body."""

    status = 404


class Conflict(CarnetError):
    status = 409


class Gone(CarnetError):
    """Existed but is no longer usable (an expired invitation link)."""

    status = 410


class DecryptionError(CarnetError):
    """A stored secret cannot be decrypted (unknown key, tampered, or bound to another owner). The message
    names the reason and the key id only, never the plaintext nor the key."""

    status = 500


class DataKeyError(CarnetError):
    """The data encryption key is missing, malformed or unsafely stored: an operator must fix it."""

    status = 500


class UnsafeURL(ValidationError):
    """A URL Carnet was asked to fetch is refused (scheme, address, redirect): the reason names the host."""


class ResponseTooLarge(ValidationError):
    """A fetched response is bigger than the fetch_max_bytes setting."""


class MissingDriver(CarnetError):
    """An optional dependency is not installed; the message names the extra to install."""

    status = 400

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"The Python package {module!r} is not installed: pip install carnet[{extra}]",
            module=module,
            extra=extra,
        )


class ConnectionFailed(CarnetError):
    """A data source's server could not be reached or refused the credentials (message never holds them)."""

    status = 502


class ConnectTimeout(ConnectionFailed):
    """A data source's server did not answer the connection in time."""

    status = 504


class QueryFailed(CarnetError):
    """The data source's server refused a query (syntax, types, permissions)."""

    status = 400


class ReadOnlyViolation(QueryFailed):
    """A data-source query tried to write; refused by Carnet's parser or by the server's read-only mode."""

    status = 403


class QueryTimeout(CarnetError):
    status = 504


class RowLimitExceeded(CarnetError):
    status = 413


class UploadTooLarge(CarnetError):
    """An uploaded file is bigger than the upload_max_bytes setting (refused while it streams in)."""

    status = 413


class LoadFailed(CarnetError):
    """A warehouse load failed for a reason other than its input (the warehouse refused it); the previous
    table is left as it was."""

    status = 500

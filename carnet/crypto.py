"""Secrets encrypted at rest: AES-256-GCM with a keyring, and a redaction helper for messages.

A value is stored as ``carnet:v1:<key id>:<base64url(nonce || ciphertext || tag)>``. The key id names which
key of the keyring encrypted it, so keys can be rotated: the current key encrypts, retired keys still
decrypt. The associated data binds a ciphertext to its owner (``context``, e.g. ``org:3:source:12``) and to
its header, so a value copied into another row, or a header edited, fails to decrypt.

Keys: ``CarnetSettings.data_key`` (CARNET_DATA_KEY) or the key file ``data_key_file`` (created on first use,
0600; refused when group or others can read it); retired keys from ``data_key_old`` (CARNET_DATA_KEY_OLD)
and files ``<data_key_file>.old.*``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import secrets
import stat
import urllib.parse
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from carnet.errors import DataKeyError, DecryptionError
from carnet.settings import CarnetSettings

VERSION = "v1"
PREFIX = f"carnet:{VERSION}:"
KEY_BYTES = 32
NONCE_BYTES = 12
REDACTED = "***"


def key_id(key: bytes) -> str:
    """A short public name for a key: a hash prefix, so it reveals nothing usable about the key."""
    return hashlib.sha256(b"carnet data key id\0" + key).hexdigest()[:16]


def new_key_text() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def parse_key(text: str, where: str) -> bytes:
    """Decode a base64 key; ``where`` names its origin in the error (never the value)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DataKeyError(f"The data key from {where} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise DataKeyError(f"The data key from {where} must be {KEY_BYTES} bytes, base64-encoded")
    return key


def _read_key_file(path: Path) -> bytes:
    # O_NOFOLLOW: a symlink planted in the secrets folder must not redirect us to another file.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise DataKeyError(f"Cannot open the data key file {path}: {error.strerror}") from None
    with os.fdopen(fd, "r") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise DataKeyError(
                f"Refusing the data key file {path}: group or others have access to it "
                f"(mode {stat.filemode(mode)}); run chmod 600 {path}"
            )
        return parse_key(f.read(), str(path))


def _create_key_file(path: Path) -> None:
    """Create the key file atomically: write a private temporary file, then hard-link it into place (link
    fails if the name exists, like O_EXCL), so a concurrent process never reads a half-written key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new_key_text() + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race: its key is the one
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Keyring:
    """The current key (encrypts) and retired keys (decrypt only), by key id."""

    def __init__(self, current: bytes, old: Iterable[bytes] = ()):
        self.current_id = key_id(current)
        self.keys = {key_id(k): k for k in old}
        self.keys[self.current_id] = current

    @classmethod
    def from_settings(cls, settings: CarnetSettings) -> Keyring:
        if settings.data_key:
            current = parse_key(settings.data_key, "CARNET_DATA_KEY (data_key)")
        else:
            path = Path(settings.data_key_file)
            if not path.exists():
                _create_key_file(path)
            current = _read_key_file(path)
        old = [parse_key(text, "CARNET_DATA_KEY_OLD (data_key_old)") for text in settings.data_key_old]
        key_path = Path(settings.data_key_file)
        if key_path.parent.is_dir():
            old += [_read_key_file(p) for p in sorted(key_path.parent.glob(key_path.name + ".old.*"))]
        return cls(current, old)


def retire_key_file(settings: CarnetSettings) -> Path:
    """Rotate the key file: the current key becomes ``data_key.old.<UTC time>`` and the next SecretBox
    creates a fresh one. Stored values stay readable; ``SecretBox.rotate`` re-encrypts them."""
    path = Path(settings.data_key_file)
    retired = path.with_name(f"{path.name}.old.{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
    os.rename(path, retired)
    return retired


def _aad(kid: str, context: str) -> bytes:
    return f"carnet-secret\0{VERSION}\0{kid}\0{context}".encode()


def _check_context(context: str) -> None:
    # An empty context would let a ciphertext be moved anywhere: every caller must name the owner.
    if not isinstance(context, str) or not context:
        raise ValueError("context must be a non-empty string naming the secret's owner")


class SecretBox:
    """``encrypt_json(obj, context) -> str`` and ``decrypt_json(text, context) -> obj``."""

    def __init__(self, settings: CarnetSettings | None = None, keyring: Keyring | None = None):
        self.keyring = keyring or Keyring.from_settings(settings or CarnetSettings())

    def encrypt_json(self, obj: Any, context: str) -> str:
        _check_context(context)
        kid = self.keyring.current_id
        plaintext = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self.keyring.keys[kid]).encrypt(nonce, plaintext, _aad(kid, context))
        return f"{PREFIX}{kid}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt_json(self, text: str, context: str) -> Any:
        _check_context(context)
        kid, blob = self._split(text)
        key = self.keyring.keys.get(kid)
        if key is None:
            raise DecryptionError(
                f"A stored secret was encrypted with a key that is not configured (key id {kid})",
                key_id=kid,
            )
        try:
            plaintext = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(kid, context))
        except InvalidTag:
            # from None: the cryptography exception adds nothing and tracebacks stay short.
            raise DecryptionError(
                "A stored secret failed its integrity check: it was altered or belongs to another owner",
                key_id=kid,
            ) from None
        return json.loads(plaintext)

    def needs_rotation(self, text: str) -> bool:
        return self._split(text)[0] != self.keyring.current_id

    def rotate(self, text: str, context: str) -> str:
        """The same secret encrypted with the current key (unchanged when it already is)."""
        if not self.needs_rotation(text):
            self.decrypt_json(text, context)  # still prove it belongs to this context
            return text
        return self.encrypt_json(self.decrypt_json(text, context), context)

    @staticmethod
    def _split(text: str) -> tuple[str, bytes]:
        if not isinstance(text, str) or not text.startswith(PREFIX):
            raise DecryptionError("A stored secret is not in a format this Carnet version can read")
        kid, _, body = text[len(PREFIX) :].partition(":")
        try:
            blob = base64.urlsafe_b64decode(body.encode())
        except (binascii.Error, ValueError):
            blob = b""
        if not kid or len(blob) < NONCE_BYTES + 16:
            raise DecryptionError("A stored secret is truncated or malformed", key_id=kid)
        return kid, blob


def _secret_strings(secrets_: Any) -> Iterable[str]:
    """Every string leaf of a secret, a list of them, or a decrypted config dict."""
    if isinstance(secrets_, dict):
        for value in secrets_.values():
            yield from _secret_strings(value)
    elif isinstance(secrets_, (list, tuple, set, frozenset)):
        for value in secrets_:
            yield from _secret_strings(value)
    elif isinstance(secrets_, bytes):
        yield secrets_.decode(errors="replace")
    elif isinstance(secrets_, (str, int, float)) and not isinstance(secrets_, bool):
        yield str(secrets_)


def redact(text: Any, secrets_: Any) -> str:
    """``text`` (a string or an exception) with every secret value replaced by ``***``, also in the
    spellings a driver may echo (URL-encoded in a connection URL, repr-escaped). Longest first, so a
    secret containing another is hidden whole."""
    result = str(text)
    variants: set[str] = set()
    for value in _secret_strings(secrets_):
        if not value:
            continue
        escaped = value.encode("unicode_escape").decode()  # how repr() shows it inside quotes
        variants.update(
            {
                value,
                urllib.parse.quote(value, safe=""),
                urllib.parse.quote_plus(value, safe=""),
                escaped,
                escaped.replace("'", "\\'"),
                escaped.replace('"', '\\"'),
            }
        )
    for variant in sorted(variants, key=len, reverse=True):
        if variant:
            result = result.replace(variant, REDACTED)
    return result

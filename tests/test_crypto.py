"""carnet/crypto.py: secrets at rest (AES-256-GCM keyring, key file handling, owner binding, rotation)
and the redact() helper. Each test uses a fresh data directory; no environment key is inherited."""

from __future__ import annotations

import base64
import os
import stat
import threading

import pytest

from carnet.crypto import PREFIX, SecretBox, key_id, redact, retire_key_file
from carnet.errors import DataKeyError, DecryptionError
from carnet.settings import CarnetSettings

CANARY = "S3cr3t-pa$$word-canary"
CONTEXT = "org:1:source:7"


@pytest.fixture(autouse=True)
def no_env_keys(monkeypatch):
    for name in ("CARNET_DATA_KEY", "CARNET_DATA_KEY_OLD", "CARNET_DATA_KEY_FILE", "CARNET_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def settings(tmp_path):
    return CarnetSettings(data_dir=str(tmp_path))


def b64key(byte: int) -> str:
    return base64.b64encode(bytes([byte]) * 32).decode()


def key_file(settings):
    return settings.data_dir + "/secrets/data_key"


def key_text(settings) -> str:
    with open(key_file(settings)) as f:
        return f.read().strip()


@pytest.mark.parametrize(
    "value",
    [
        {"password": CANARY, "user": "reader"},
        [CANARY, 1, None, True],
        CANARY,
        {"nested": {"token": CANARY, "unicode": "clé ünïcødé ✓"}},
    ],
    ids=["dict", "list", "string", "nested-unicode"],
)
def test_round_trip_hides_the_plaintext(settings, value):
    box = SecretBox(settings)
    sealed = box.encrypt_json(value, CONTEXT)
    assert sealed.startswith(PREFIX + box.keyring.current_id + ":")
    assert CANARY not in sealed and base64.b64encode(CANARY.encode()).decode() not in sealed
    assert box.decrypt_json(sealed, CONTEXT) == value
    # A fresh nonce each time: equal secrets do not give equal ciphertexts.
    assert box.encrypt_json(value, CONTEXT) != sealed


def test_key_file_created_once_private_and_reused(settings):
    sealed = SecretBox(settings).encrypt_json(CANARY, CONTEXT)
    path = key_file(settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert len(base64.b64decode(key_text(settings))) == 32
    # A second process (a new box) reads the same key instead of making another.
    assert SecretBox(CarnetSettings(data_dir=settings.data_dir)).decrypt_json(sealed, CONTEXT) == CANARY


def test_concurrent_first_use_agrees_on_one_key(settings):
    barrier, ids = threading.Barrier(8), []

    def first_use():
        barrier.wait()
        ids.append(SecretBox(CarnetSettings(data_dir=settings.data_dir)).keyring.current_id)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert os.listdir(os.path.dirname(key_file(settings))) == ["data_key"]  # no temporary file left


@pytest.mark.parametrize(
    "mode", [0o640, 0o604, 0o660, 0o644], ids=["group-r", "other-r", "group-rw", "world-r"]
)
def test_key_file_readable_by_others_is_refused(settings, mode):
    SecretBox(settings)
    os.chmod(key_file(settings), mode)
    with pytest.raises(DataKeyError) as caught:
        SecretBox(settings)
    assert "chmod 600" in caught.value.message and key_text(settings) not in caught.value.message


def test_key_file_symlink_is_refused(settings, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text(b64key(1))
    os.chmod(target, 0o600)
    os.makedirs(os.path.dirname(key_file(settings)))
    os.symlink(target, key_file(settings))
    with pytest.raises(DataKeyError, match="Cannot open the data key file"):
        SecretBox(settings)


def test_environment_key_is_used_and_no_file_is_made(settings, monkeypatch):
    monkeypatch.setenv("CARNET_DATA_KEY", b64key(7))
    box = SecretBox(CarnetSettings(data_dir=settings.data_dir))
    assert box.keyring.current_id == key_id(bytes([7]) * 32)
    assert not os.path.exists(key_file(settings))
    assert box.decrypt_json(box.encrypt_json(CANARY, CONTEXT), CONTEXT) == CANARY


@pytest.mark.parametrize(
    "bad",
    ["not base64 at all!", base64.b64encode(b"short").decode(), b64key(1) + "AAAA"],
    ids=["garbage", "5-bytes", "extra-data"],
)
def test_malformed_environment_key_is_refused_without_echoing_it(settings, bad):
    with pytest.raises(DataKeyError) as caught:
        SecretBox(CarnetSettings(data_dir=settings.data_dir, data_key=bad))
    assert "CARNET_DATA_KEY" in caught.value.message and bad not in caught.value.message


def tamper(sealed: str, how: str) -> str:
    head, _, body = sealed.rpartition(":")
    raw = bytearray(base64.urlsafe_b64decode(body))
    if how == "flip-byte":
        raw[20] ^= 1
        return f"{head}:{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    if how == "truncated":
        return f"{head}:{base64.urlsafe_b64encode(bytes(raw[:20])).decode()}"
    if how == "other-version":
        return sealed.replace("carnet:v1:", "carnet:v2:")
    if how == "plain-json":
        return '{"password": "x"}'
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["flip-byte", "truncated", "other-version", "plain-json"])
def test_tampered_values_fail_cleanly(settings, how):
    box = SecretBox(settings)
    sealed = box.encrypt_json({"password": CANARY}, CONTEXT)
    with pytest.raises(DecryptionError) as caught:
        box.decrypt_json(tamper(sealed, how), CONTEXT)
    assert caught.value.status == 500 and CANARY not in str(caught.value.to_json())
    # No chained exception in the traceback (it could carry cryptography internals).
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.mark.parametrize(
    "other_context", ["org:2:source:7", "org:1:source:8", "org:1:connection:7", "org:1:source:7 "]
)
def test_ciphertext_copied_to_another_owner_fails(settings, other_context):
    box = SecretBox(settings)
    sealed = box.encrypt_json({"password": CANARY}, CONTEXT)
    with pytest.raises(DecryptionError, match="belongs to another owner") as caught:
        box.decrypt_json(sealed, other_context)
    assert CANARY not in caught.value.message
    key = key_text(settings)
    assert key not in repr(caught.value) and key not in str(caught.value.to_json())


def test_empty_context_is_a_programming_error(settings):
    with pytest.raises(ValueError, match="context"):
        SecretBox(settings).encrypt_json(CANARY, "")


def test_rotation_with_retired_key_file(settings):
    old_box = SecretBox(settings)
    old_sealed = old_box.encrypt_json({"password": CANARY}, CONTEXT)
    retired = retire_key_file(settings)
    assert retired.name.startswith("data_key.old.")

    new_box = SecretBox(CarnetSettings(data_dir=settings.data_dir))
    assert new_box.keyring.current_id != old_box.keyring.current_id
    assert new_box.needs_rotation(old_sealed)
    assert new_box.decrypt_json(old_sealed, CONTEXT) == {"password": CANARY}
    rotated = new_box.rotate(old_sealed, CONTEXT)
    assert rotated.startswith(PREFIX + new_box.keyring.current_id + ":")
    assert not new_box.needs_rotation(rotated) and new_box.rotate(rotated, CONTEXT) == rotated
    # Rotation keeps the owner binding.
    with pytest.raises(DecryptionError):
        new_box.rotate(old_sealed, "org:2:source:7")

    # Once the old key is removed, only rotated values remain readable.
    retired.unlink()
    last_box = SecretBox(CarnetSettings(data_dir=settings.data_dir))
    assert last_box.decrypt_json(rotated, CONTEXT) == {"password": CANARY}
    with pytest.raises(DecryptionError, match="not configured") as caught:
        last_box.decrypt_json(old_sealed, CONTEXT)
    assert caught.value.fields["key_id"] == old_box.keyring.current_id


def test_rotation_with_environment_keys(settings, monkeypatch):
    old = SecretBox(CarnetSettings(data_dir=settings.data_dir, data_key=b64key(1)))
    sealed = old.encrypt_json(CANARY, CONTEXT)
    new = SecretBox(CarnetSettings(data_dir=settings.data_dir, data_key=b64key(2), data_key_old=[b64key(1)]))
    assert new.rotate(sealed, CONTEXT).startswith(PREFIX + key_id(bytes([2]) * 32))
    assert new.decrypt_json(sealed, CONTEXT) == CANARY
    # The environment variable is comma-separated.
    monkeypatch.setenv("CARNET_DATA_KEY_OLD", f"{b64key(1)}, {b64key(3)}")
    assert CarnetSettings().data_key_old == [b64key(1), b64key(3)]


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        (f"password authentication failed: {CANARY}", CANARY, "password authentication failed: ***"),
        ("postgresql://u:p%40ss%2Fw@db/x refused", "p@ss/w", "postgresql://u:***@db/x refused"),
        ("token=a+b%3Dc sent", "a b=c", "token=*** sent"),
        ("repr: 'it\\'s\\\\x'", "it's\\x", "repr: '***'"),
        ("keys abcdef and abc", ["abc", "abcdef"], "keys *** and ***"),
        (
            "user reader pw hunter2 key K9",
            {"password": "hunter2", "extra": {"api_key": "K9"}},
            "user reader pw *** key ***",
        ),
        ("nothing to hide", ["", None], "nothing to hide"),
    ],
    ids=[
        "plain",
        "url-encoded",
        "form-encoded",
        "repr-escaped",
        "longest-first",
        "nested-dict",
        "empty-secrets",
    ],
)
def test_redact(text, secrets, expected):
    assert redact(text, secrets) == expected


def test_redact_an_exception_message():
    try:
        raise ConnectionError(f"could not connect with password {CANARY!r}")
    except ConnectionError as error:
        assert redact(error, {"password": CANARY}) == "could not connect with password '***'"

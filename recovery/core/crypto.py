"""Optional encryption at rest of job payloads in Redis (work-queue messages, DLQ originals).

In the spirit of Sidekiq Enterprise's encrypted arguments: with RECOVERY_ENCRYPTION_KEYS set
(comma-separated Fernet keys; the first encrypts, every one decrypts, so a key can be rotated
by putting the new one first and dropping the old one once nothing written with it is left),
a job's request is stored in Redis as a Fernet token (AES-128-CBC + HMAC-SHA256, so a tampered
token is refused, never half-read). Without keys, payloads are stored as plain JSON.

The work queue uses a kombu serializer, `recovery-fernet`: JSON wrapped in Fernet. Producers
use it when a key is set; workers accept it alongside `json` (pickle stays refused).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from recovery.config.keys import KEYS_VARIABLE
from recovery.config.settings import get_settings

SERIALIZER = "recovery-fernet"
CONTENT_TYPE = "application/x-recovery-fernet"


class UndecryptableError(ValueError):
    """A token that none of the configured keys opens (wrong key, or tampered with)."""


class Cipher:
    """MultiFernet over the configured keys: the first encrypts, every one decrypts."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("A cipher needs at least one key.")
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def __repr__(self) -> str:
        return "<Cipher keys hidden>"

    def encrypt(self, data: bytes) -> str:
        return self._fernet.encrypt(data).decode("ascii")

    def decrypt(self, token: str | bytes) -> bytes:
        raw = token.encode("ascii", errors="replace") if isinstance(token, str) else token
        try:
            return self._fernet.decrypt(raw)
        except InvalidToken:
            raise UndecryptableError(
                f"The payload could not be decrypted with any key in {KEYS_VARIABLE}: it was "
                "written with another key, or it was altered.") from None

    def seal_json(self, value: Any) -> str:
        return self.encrypt(json.dumps(value, separators=(",", ":")).encode())

    def open_json(self, token: str | bytes) -> Any:
        return json.loads(self.decrypt(token))


@lru_cache(maxsize=8)
def _cipher(keys: tuple[str, ...]) -> Cipher:
    return Cipher(keys)


def cipher_for(keys: Sequence[str]) -> Cipher | None:
    """The cipher for these keys (built once per key set), or None when there are none."""
    return _cipher(tuple(keys)) if keys else None


def current_cipher() -> Cipher | None:
    """The cipher of this process's settings, or None when encryption is off."""
    return cipher_for(get_settings().encryption_keys)


def task_serializer() -> str:
    """The serializer a producer sends jobs with: encrypted exactly when keys are set."""
    return SERIALIZER if current_cipher() is not None else "json"


UndecryptableHook = Callable[[bytes], None]
_on_undecryptable: list[UndecryptableHook] = []


def _encode(value: Any) -> str:
    cipher = current_cipher()
    if cipher is None:
        raise UndecryptableError(
            f"The {SERIALIZER} serializer needs {KEYS_VARIABLE}; set it, or send with json.")
    return cipher.seal_json(value)


def _decode(data: bytes | str) -> Any:
    raw = data.encode("ascii", errors="replace") if isinstance(data, str) else data
    cipher = current_cipher()
    try:
        if cipher is None:
            raise UndecryptableError(
                f"An encrypted work message arrived and {KEYS_VARIABLE} is not set here.")
        return cipher.open_json(raw)
    except UndecryptableError:
        for hook in _on_undecryptable:
            hook(raw)
        raise


def register_serializer(on_undecryptable: UndecryptableHook | None = None) -> None:
    """Make `recovery-fernet` known to kombu (idempotent). `on_undecryptable` gets the token
    of a message no key opens, before the decode error reaches Celery (which would drop it):
    it keeps the message somewhere an operator can see it."""
    from kombu.serialization import register

    register(SERIALIZER, _encode, _decode, content_type=CONTENT_TYPE, content_encoding="utf-8")
    if on_undecryptable is not None and on_undecryptable not in _on_undecryptable:
        _on_undecryptable.append(on_undecryptable)

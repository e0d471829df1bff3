"""RECOVERY_ENCRYPTION_KEYS: the Fernet keys, checked when settings load.

The encryption that uses them is `recovery.core.crypto`.
"""

from __future__ import annotations

from cryptography.fernet import Fernet

KEYS_VARIABLE = "RECOVERY_ENCRYPTION_KEYS"


def check_keys(text: str) -> tuple[str, ...]:
    """The keys in a RECOVERY_ENCRYPTION_KEYS value; ValueError with a sentence if one is bad.

    The message never repeats a key: it names the key by its position.
    """
    keys = tuple(part.strip() for part in text.split(",") if part.strip())
    for number, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ValueError(
                f"key {number} of {len(keys)} is not a Fernet key (32 url-safe base64-encoded "
                "bytes, as `python -c \"from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())\"` prints)") from None
    return keys

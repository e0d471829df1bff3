"""Encryption at rest: keys from the environment, rotation, the kombu serializer, the settings."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.serialization import dumps, loads

from recovery.celery_app import celery_config
from recovery.config.keys import check_keys
from recovery.config.settings import SettingsError, load_settings
from recovery.core.crypto import CONTENT_TYPE, SERIALIZER, Cipher, UndecryptableError

KEY_A, KEY_B = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    old = Cipher([KEY_A]).seal_json({"n": 1})
    rotated = Cipher([KEY_B, KEY_A])
    assert rotated.open_json(old) == {"n": 1}
    assert Cipher([KEY_B]).open_json(rotated.seal_json({"n": 2})) == {"n": 2}


def test_a_wrong_key_or_a_tampered_token_is_refused_with_a_sentence() -> None:
    token = Cipher([KEY_A]).seal_json({"password": "hunter2"})
    message = ("The payload could not be decrypted with any key in RECOVERY_ENCRYPTION_KEYS: "
               "it was written with another key, or it was altered.")
    with pytest.raises(UndecryptableError) as wrong:
        Cipher([KEY_B]).open_json(token)
    assert str(wrong.value) == message
    with pytest.raises(UndecryptableError):
        Cipher([KEY_A]).open_json(token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB"))
    assert repr(Cipher([KEY_A])) == "<Cipher keys hidden>"


@pytest.mark.parametrize(("value", "message"), [
    ("not-a-key", "RECOVERY_ENCRYPTION_KEYS must be comma-separated Fernet keys; key 1 of 1 is "
                  "not a Fernet key"),
    (f"{KEY_A},{KEY_A[:-4]}", "RECOVERY_ENCRYPTION_KEYS must be comma-separated Fernet keys; "
                              "key 2 of 2 is not a Fernet key"),
])
def test_bad_keys_stop_the_process_without_echoing_them(value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"RECOVERY_ENCRYPTION_KEYS": value})
    assert str(caught.value).startswith(message)
    assert "Fernet.generate_key()" in str(caught.value)
    assert KEY_A not in str(caught.value) and "not-a-key" not in str(caught.value)


def test_keys_are_read_in_order_and_never_shown_in_the_settings_repr() -> None:
    settings = load_settings({"RECOVERY_ENCRYPTION_KEYS": f" {KEY_B} , {KEY_A},"})
    assert settings.encryption_keys == (KEY_B, KEY_A)
    assert KEY_A not in repr(settings) and KEY_B not in repr(settings)
    assert check_keys("") == ()


@pytest.mark.parametrize(("env", "message"), [
    ({"DLQ_MAX_ENTRIES": "0"}, "DLQ_MAX_ENTRIES must be at least 1, got '0'."),
    ({"DLQ_MAX_AGE_DAYS": "0"}, "DLQ_MAX_AGE_DAYS must be at least 1, got '0'."),
    ({"DLQ_MAX_AGE_DAYS": "36501"}, "DLQ_MAX_AGE_DAYS must be at most 36500, got '36501'; "
                                   "a value this large is almost certainly a mistake."),
    ({"DLQ_MAX_AGE_DAYS": "six months"},
     "DLQ_MAX_AGE_DAYS must be a whole number, got 'six months'."),
    ({"DLQ_AUTO_REPLAY_POISON": "maybe"},
     "DLQ_AUTO_REPLAY_POISON must be true or false (1/0 and yes/no also work), got 'maybe'."),
    ({"DLQ_AUTO_REPLAY_CLIENT_ERRORS": "2"},
     "DLQ_AUTO_REPLAY_CLIENT_ERRORS must be true or false (1/0 and yes/no also work), got '2'."),
])
def test_dlq_settings_are_validated_with_a_sentence(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert str(caught.value) == message


def test_workers_accept_json_and_the_encrypted_serializer_never_pickle() -> None:
    plain = celery_config(load_settings({}))
    keyed = celery_config(load_settings({"RECOVERY_ENCRYPTION_KEYS": KEY_A}))
    assert plain["task_serializer"] == "json" and keyed["task_serializer"] == SERIALIZER
    for config in (plain, keyed):
        assert config["accept_content"] == ["json", SERIALIZER]
    with pytest.raises(ContentDisallowed):
        loads(b"\x80\x04K\x01.", "application/x-python-serialize", "binary",
              accept={"application/json", CONTENT_TYPE})


def test_the_serializer_round_trips_with_the_process_key_and_refuses_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from recovery.config.settings import reset_settings

    kept: list[bytes] = []
    monkeypatch.setattr("recovery.core.crypto._on_undecryptable", [kept.append])
    monkeypatch.setenv("RECOVERY_ENCRYPTION_KEYS", KEY_A)
    reset_settings()
    try:
        content_type, encoding, body = dumps({"job": {"password": "hunter2"}}, SERIALIZER)
        assert content_type == CONTENT_TYPE and "hunter2" not in str(body)
        assert loads(body, content_type, encoding, accept={CONTENT_TYPE}) == {
            "job": {"password": "hunter2"}}
        monkeypatch.setenv("RECOVERY_ENCRYPTION_KEYS", KEY_B)
        reset_settings()
        with pytest.raises((DecodeError, UndecryptableError)):
            loads(body, content_type, encoding, accept={CONTENT_TYPE})
        assert kept == [body.encode() if isinstance(body, str) else body]  # handed to the hook
    finally:
        reset_settings()

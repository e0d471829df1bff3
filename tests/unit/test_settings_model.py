"""The settings model: one reader, its JSON Schema, secrets kept out of sight, error order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from recovery.config.setting_types import SPACE, Whole
from recovery.config.settings import (
    VARIABLES,
    Settings,
    SettingsError,
    load_settings,
    settings_json_schema,
)

README = Path(__file__).resolve().parents[2] / "README.md"
SECRETS = {"RECOVERY_ENCRYPTION_KEYS", "SERVE_TOKEN", "CONSOLE_USERS", "CONSOLE_SECRET_KEY"}
FERNET_KEY = Fernet.generate_key().decode()
TOKEN = "tok3n-Never-Shown-0123456789"
SECRET_KEY = "k3y-Never-Shown-" + "0123456789abcdef" * 2
PASSWORD_HASH = "scrypt$16384$8$1$c2FsdA$aGFzaC1uZXZlci1zaG93bg"


def readme_variables() -> set[str]:
    """The variables of the README's settings table (## Configuration, before its subsections)."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE))


def error_for(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    return str(caught.value)


def test_only_the_given_mapping_is_read(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setenv("MAX_RETRIES", "not a number")
    monkeypatch.setenv("SERVICE_NAME", "from-os-environ")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("API_TIMEOUT=1234\n")
    loaded = load_settings({"LOG_LEVEL": "debug"})
    assert (loaded.max_retries, loaded.service_name, loaded.api_timeout_ms) == (
        3, "api-recovery", 30000)
    assert loaded.log_level == "debug"
    assert Settings().service_name == "api-recovery"  # the model reads nothing by itself


def test_without_a_mapping_the_process_environment_is_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_NAME", "from-os-environ")
    assert load_settings().service_name == "from-os-environ"


def test_variables_are_case_sensitive() -> None:
    assert load_settings({"max_retries": "9", "Max_Retries": "9"}).max_retries == 3


def test_the_readme_table_lists_exactly_the_variables_read() -> None:
    assert readme_variables() == set(VARIABLES)


def test_the_schema_has_one_described_property_per_variable_and_field() -> None:
    schema = settings_json_schema()
    properties = schema["properties"]
    assert set(properties) == set(VARIABLES) == readme_variables()
    assert len(VARIABLES) == len(Settings.model_fields)
    assert {field.alias for field in Settings.model_fields.values()} == set(properties)
    assert all(spec["description"].strip() for spec in properties.values())
    assert "additionalProperties" not in schema and not schema.get("required")
    assert {name for name, spec in properties.items() if spec.get("writeOnly")} == SECRETS


def test_the_schema_defaults_are_the_values_loaded_when_unset() -> None:
    loaded = load_settings({})
    defaults = {field.alias: getattr(loaded, name)
                for name, field in Settings.model_fields.items()}
    shown = {name: spec["default"] for name, spec in settings_json_schema()["properties"].items()
             if "default" in spec}
    assert shown == {name: defaults[name] for name in shown}
    unset = {"SECONDARY_API_URL", "SENTRY_DSN", "RECOVERY_ENCRYPTION_KEYS", "CONSOLE_USERS",
             "BROKER_URL", "RETRY_AFTER_MAX", "WORKER_CONCURRENCY"}
    assert unset.isdisjoint(shown)
    assert shown["API_TIMEOUT"] == 30000 and shown["DLQ_ENABLED"] is True


def test_the_schema_states_the_bounds_of_whole_numbers() -> None:
    properties = settings_json_schema()["properties"]
    assert properties["SERVE_PORT"] | {"description": ""} == {
        "type": "integer", "minimum": 0, "maximum": 65535, "default": 9808,
        "title": "SERVE_PORT", "description": ""}
    assert properties["LOG_LEVEL"]["enum"] == ["debug", "info", "warning", "error", "critical"]


def test_secrets_never_appear_in_repr_or_str() -> None:
    loaded = load_settings({"RECOVERY_ENCRYPTION_KEYS": FERNET_KEY, "SERVE_TOKEN": TOKEN,
                            "CONSOLE_SECRET_KEY": SECRET_KEY,
                            "CONSOLE_USERS": f"ada:operator:{PASSWORD_HASH}"})
    assert loaded.serve_token == TOKEN and loaded.encryption_keys == (FERNET_KEY,)
    assert loaded.console_users == (("ada", "operator", PASSWORD_HASH),)
    for shown in (repr(loaded), str(loaded)):
        assert "service_name='api-recovery'" in shown
        for secret in (FERNET_KEY, TOKEN, SECRET_KEY, PASSWORD_HASH):
            assert secret not in shown


def test_urls_that_may_carry_a_password_stay_out_of_repr() -> None:
    loaded = load_settings({
        "DATABASE_URL": "postgresql://app:Db-Passw0rd@db.internal/app",
        "REDIS_URL": "redis://:Redis-Passw0rd@cache.internal:6379/0",
        "BROKER_URL": "amqp://app:Amqp-Passw0rd@mq.internal:5672/app",
        "SENTRY_DSN": "https://Dsn-Key0123@sentry.example.com/1"})
    assert loaded.database_url.endswith("@db.internal/app")
    for shown in (repr(loaded), str(loaded)):
        for secret in ("Db-Passw0rd", "Redis-Passw0rd", "Amqp-Passw0rd", "Dsn-Key0123"):
            assert secret not in shown


@pytest.mark.parametrize(
    ("env", "secret"),
    [({"SERVE_TOKEN": "Short-S3cret"}, "Short-S3cret"),
     ({"SERVE_TOKEN": "Bad!Chars!S3cret!Value"}, "Bad!Chars!S3cret!Value"),
     ({"CONSOLE_SECRET_KEY": "Short-Signing-S3cret"}, "Short-Signing-S3cret"),
     ({"CONSOLE_USERS": "ada:viewer:PlainPassw0rd"}, "PlainPassw0rd"),
     ({"CONSOLE_USERS": "ada:PlainPassw0rd"}, "PlainPassw0rd"),
     ({"RECOVERY_ENCRYPTION_KEYS": f"{FERNET_KEY},N0tAFernetKeyAtAll"}, "N0tAFernetKeyAtAll")],
)
def test_secrets_never_appear_in_an_error(env: dict[str, str], secret: str) -> None:
    message = error_for(env)
    assert message.startswith(next(iter(env))) and secret not in message


def test_a_settings_built_in_code_is_validated_without_showing_the_input() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(serve_token="Short-S3cret")
    assert "16 to 256 characters" in str(caught.value) and "Short-S3cret" not in str(caught.value)
    with pytest.raises(ValidationError, match="at least 1 ms"):
        Settings(api_timeout_ms=0)
    assert Settings(api_timeout_ms=5, dlq_enabled=False) == load_settings(
        {"API_TIMEOUT": "5", "DLQ_ENABLED": "no"})


def test_the_first_wrong_variable_in_reading_order_is_reported() -> None:
    assert error_for({"SERVE_PORT": "-1", "LOG_LEVEL": "loud"}).startswith("LOG_LEVEL ")
    assert error_for({"WORKER_POOL": "gevent", "WORKER_CONCURRENCY": "x"}).startswith(
        "WORKER_POOL ")


def test_a_wrong_variable_is_reported_before_a_check_across_variables() -> None:
    message = error_for({"RETRY_MAX_DELAY": "4000000", "SERVE_PORT": "port"})
    assert message == "SERVE_PORT must be a whole number, got 'port'."


def whole_number_fields() -> dict[str, tuple[str, Whole]]:
    """Variable -> (field, its bounds) for every whole-number setting.

    REDIS_VISIBILITY_TIMEOUT is left out: a small one is refused by the countdown check, whose
    sentence starts with the countdown it is too short for (tests/unit/test_settings.py).
    """
    found = {}
    for name, field in Settings.model_fields.items():
        kinds = [item for item in field.metadata if isinstance(item, Whole)]
        if kinds and field.alias != "REDIS_VISIBILITY_TIMEOUT":
            found[str(field.alias)] = (name, kinds[0])
    return found


WHOLE_FIELDS = whole_number_fields()
NUMBERS = st.integers(min_value=-10**25, max_value=10**25)
WHOLE_TEXT = st.one_of(
    st.text(max_size=30),
    NUMBERS.map(str),
    st.tuples(st.sampled_from(["", " ", "\t", "+"]), NUMBERS).map(lambda pair: f"{pair[0]}"
                                                                  f"{pair[1]} "),
    st.integers(min_value=0, max_value=70_000).map(str),
)


def test_every_whole_number_setting_is_in_the_property_test() -> None:
    assert {"API_TIMEOUT", "SERVE_PORT", "CONSOLE_PORT", "WORKER_CONCURRENCY", "RETRY_AFTER_MAX",
            "DLQ_MAX_AGE_DAYS", "RESULT_MAX_BYTES", "RABBITMQ_CONSUMER_TIMEOUT"} <= set(
        WHOLE_FIELDS)
    assert len(WHOLE_FIELDS) >= 30


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(WHOLE_FIELDS)), WHOLE_TEXT)
def test_a_whole_number_setting_is_a_value_in_bounds_or_a_settings_error(
        variable: str, text: str) -> None:
    name, bounds = WHOLE_FIELDS[variable]
    try:
        value = getattr(load_settings({variable: text}), name)
    except SettingsError as error:
        assert str(error).startswith(f"{variable} "), str(error)
    else:
        assert value == int(text.strip(SPACE))
        assert bounds.minimum <= value <= bounds.maximum

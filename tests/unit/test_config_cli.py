"""`recovery-cli config schema` and `recovery-cli config check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from recovery.cli.main import main
from recovery.config.file_models import integrations_file_schema
from recovery.config.settings import reset_settings, settings_json_schema

GOOD = """\
integrations:
  - id: shop
    base_url: https://shop.example.com
workflows:
  - name: order
    steps:
      - {id: a, type: validation, config: {callable: recovery.demo.order.validate_order}}
"""


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.delenv("RECOVERY_INTEGRATIONS", raising=False)
    reset_settings()
    yield
    reset_settings()


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["config", *args])
    return result.exit_code, result.stdout, result.stderr


def test_schema_prints_the_integrations_file_schema() -> None:
    code, out, _ = run("schema")
    assert code == 0
    assert json.loads(out) == integrations_file_schema()


def test_schema_of_the_settings_names_every_variable() -> None:
    code, out, _ = run("schema", "--settings")
    assert code == 0
    schema = json.loads(out)
    assert schema == settings_json_schema()
    assert {"REDIS_URL", "API_TIMEOUT", "CONSOLE_SECRET_KEY"} <= set(schema["properties"])
    assert schema["properties"]["CONSOLE_SECRET_KEY"]["writeOnly"] is True


def test_schema_writes_the_output_file(tmp_path: Path) -> None:
    target = tmp_path / "integrations.schema.json"
    code, out, _ = run("schema", "--output", str(target))
    assert (code, out) == (0, "")
    assert json.loads(target.read_text()) == integrations_file_schema()


def test_schema_into_a_missing_folder_exits_2_with_a_sentence(tmp_path: Path) -> None:
    code, _, err = run("schema", "--output", str(tmp_path / "no" / "schema.json"))
    assert code == 2
    assert err.startswith(f"Error: Cannot write the schema to '{tmp_path / 'no' / 'schema.json'}'")


def test_check_counts_integrations_and_workflows(tmp_path: Path) -> None:
    path = tmp_path / "integrations.yaml"
    path.write_text(GOOD)
    assert run("check", str(path))[:2] == (0, "ok: 1 integrations, 1 workflows\n")


def test_check_reads_recovery_integrations_by_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "integrations.yaml"
    path.write_text(GOOD)
    monkeypatch.setenv("RECOVERY_INTEGRATIONS", str(path))
    reset_settings()
    assert run("check")[:2] == (0, "ok: 1 integrations, 1 workflows\n")


@pytest.mark.parametrize(("text", "sentence"), [
    (GOOD.replace("https://shop.example.com", "https://shop.example.com\n    retry: {jitter: 2}"),
     "integration 'shop': key 'retry.jitter' must be from 0 to 1, got 2."),
    (GOOD.replace("type: validation", "type: email"),
     "workflow 'order': step 'a': key 'type' must be one of api_call, validation, "
     "transformation, persistence, got 'email'."),
])
def test_check_exits_2_with_the_first_problem(tmp_path: Path, text: str, sentence: str) -> None:
    path = tmp_path / "integrations.yaml"
    path.write_text(text)
    code, out, err = run("check", str(path))
    assert (code, out) == (2, "")
    assert err == f"Error: {path}: {sentence}\n"


def test_check_without_a_file_exits_2() -> None:
    code, _, err = run("check")
    assert code == 2
    assert err == "Error: No integrations file to check: name one, or set RECOVERY_INTEGRATIONS.\n"

"""The integrations file's JSON Schema: a valid draft 2020-12 schema that every example file
and README snippet passes, and that accepts and refuses what the loader does."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery.config.file_models import integrations_file_schema
from recovery.config.loader import load_file
from recovery.config.registry import RegistryError
from recovery.config.settings import load_settings
from recovery.config.workflow_file import load_file as load_workflows
from recovery.config.workflows import WorkflowError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "integrations.yaml"
ENV = {"PAYMENTS_API_KEY": "pk", "CRM_CLIENT_SECRET": "s", "BACKUP_PAYMENTS_KEY": "bk",
       "PAYMENTS_CLIENT_SECRET": "ps"}
VALIDATOR = jsonschema.Draft202012Validator(integrations_file_schema())


def readme_yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def loads(tmp_path: Path, document: dict[str, Any]) -> tuple[int, int]:
    """(integrations, workflows) the loaders read from `document`, written as a file."""
    path = tmp_path / "integrations.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    registry = load_file(str(path), load_settings({}), ENV)
    return len(registry), len(load_workflows(str(path), registry.ids(), required=False))


def example() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return document


def test_the_schema_is_a_valid_draft_2020_12_schema_with_the_field_docs() -> None:
    schema = integrations_file_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["integrations"] and schema["additionalProperties"] is False
    retry = schema["$defs"]["RetryModel"]["properties"]
    assert "the first one included" in retry["max_attempts"]["description"]
    assert retry["jitter"]["default"] == 0.2
    assert "default" not in retry["max_attempts"]  # MAX_RETRIES: the environment's


def test_the_example_files_pass_the_schema_and_load(tmp_path: Path) -> None:
    document = example()
    document["workflows"] = yaml.safe_load((REPO / "examples" / "workflows.yaml").read_text())[
        "workflows"]
    VALIDATOR.validate(document)
    assert loads(tmp_path, document) == (2, 2)


def test_the_readme_snippets_pass_the_schema_and_load(tmp_path: Path) -> None:
    """Every YAML block of the README: a whole file, a workflows list, or keys of one
    integration (merged into the file's first integration)."""
    parts = [yaml.safe_load(block) for block in readme_yaml_blocks()]
    document = next(part for part in parts if "integrations" in part)
    document["integrations"].append({"id": "crm", "base_url": "https://crm.example.com"})
    for part in parts:
        if "workflows" in part:
            document["workflows"] = part["workflows"]
        elif "integrations" not in part:
            document["integrations"][0].update(part)
    VALIDATOR.validate(document)
    assert loads(tmp_path, document) == (2, 1)
    assert {"strategies", "audit"} <= set(document["integrations"][0])


WHOLE_KEYS = [
    (0, "retry", "max_attempts"), (0, "circuit_breaker", "threshold"),
    (0, "circuit_breaker", "half_open_max_calls"), (0, "circuit_breaker", "minimum_calls"),
    (0, "rate_limit", "max_requests"), (0, "health_check", "failure_threshold"),
    (0, None, "timeout_ms"), (0, None, "deadline_ms"), (0, None, "max_response_bytes"),
    (1, "retry", "max_attempts"),
]
#: JSON Schema counts 2.0 as an integer; YAML tells 2.0 from 2 and the loader refuses it.
VALUES = st.one_of(
    st.integers(min_value=-3, max_value=2 * 1024 ** 3), st.booleans(), st.none(),
    st.floats(allow_nan=True).filter(lambda x: x != x or not float(x).is_integer()),
    st.text(max_size=6), st.sampled_from(["5", "1e3", "0x10", "", []]),
)


PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def loader_accepts(tmp_path: Path, document: dict[str, Any]) -> bool:
    try:
        loads(tmp_path, document)
    except (RegistryError, WorkflowError):
        return False
    return True


@PROPERTY
@given(place=st.sampled_from(WHOLE_KEYS), value=VALUES)
def test_the_loader_and_the_schema_agree_on_whole_numbers(
        tmp_path: Path, place: tuple[int, str | None, str], value: Any) -> None:
    document = copy.deepcopy(example())
    number, section, key = place
    entry = document["integrations"][number]
    (entry if section is None else entry.setdefault(section, {}))[key] = value
    assert VALIDATOR.is_valid(document) == loader_accepts(tmp_path, document), value


CHOICES = st.one_of(st.sampled_from(["api", "cache", "default", "degraded", "compensate",
                                     "park", "Cache", " cache"]), st.text(max_size=8),
                    st.integers(), st.none())


@PROPERTY
@given(fallback_type=CHOICES, on_failure=CHOICES)
def test_the_loader_and_the_schema_agree_on_choices(
        tmp_path: Path, fallback_type: Any, on_failure: Any) -> None:
    document = {"integrations": [{"id": "shop", "base_url": "https://shop.example.com",
                                  "fallbacks": [{"type": fallback_type}]}],
                "workflows": [{"name": "order", "on_failure": on_failure, "steps": [
                    {"id": "a", "type": "validation",
                     "config": {"callable": "recovery.demo.order.validate_order"}}]}]}
    assert VALIDATOR.is_valid(document) == loader_accepts(tmp_path, document)


@pytest.mark.parametrize(("change", "sentence"), [
    ({"timeout_ms": "5"}, "key 'timeout_ms' must be a whole number ms, got '5'."),
    ({"retry": {"max_attempts": True}}, "key 'retry.max_attempts' must be a whole number, got "
                                        "true."),
    ({"fallbacks": [{"type": "queue"}]}, "key 'fallbacks[1].type' must be one of api, cache, "
                                         "default, degraded, got 'queue'."),
])
def test_what_the_schema_refuses_the_loader_refuses_with_a_sentence(
        tmp_path: Path, change: dict[str, Any], sentence: str) -> None:
    document = {"integrations": [{"id": "shop", "base_url": "https://shop.example.com",
                                  **change}]}
    assert not VALIDATOR.is_valid(document)
    with pytest.raises(RegistryError) as caught:
        loads(tmp_path, document)
    assert str(caught.value) == f"{tmp_path / 'integrations.yaml'}: integration 'shop': {sentence}"

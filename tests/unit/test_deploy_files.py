"""Every command in deploy/ names a real entry point, module, Celery app, sub-command and option."""

from __future__ import annotations

import configparser
import importlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from celery import Celery

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = DEPLOY / "systemd"
INFRA_TOOLS = {"redis-server", "redis-cli", "pg_isready"}


def procfile() -> dict[str, list[str]]:
    processes = {}
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if match:
            processes[match.group(1)] = shlex.split(match.group(2))
    return processes


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def unit_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for unit in sorted(UNITS.iterdir()):
        for line in unit.read_text().splitlines():
            key, _, value = line.partition("=")
            if key in ("ExecStart", "ExecStartPre"):
                found.append((unit.name, key, shlex.split(value)))
    return found


def console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    entries = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in entry.split("=", 1)) for entry in entries)


def option_names(argv: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in argv if arg.startswith("-")]


def check_click_options(command: click.Command, argv: list[str], where: str) -> None:
    known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    unknown = [name for name in option_names(argv) if name not in known]
    assert not unknown, f"{where}: {command.name} has no option {unknown}"


def check_celery(argv: list[str], where: str) -> None:
    from celery.bin.celery import celery as celery_group

    assert argv[0] == "-A", f"{where}: name the app with -A first"
    module = importlib.import_module(argv[1])
    assert isinstance(getattr(module, "app", None), Celery), f"{where}: {argv[1]} has no app"
    sub, rest = argv[2], argv[3:]
    assert sub in celery_group.commands, f"{where}: celery has no sub-command {sub!r}"
    if sub == "flower":
        from flower.options import options as flower_options

        unknown = [name for name in option_names(rest)
                   if name.lstrip("-") not in flower_options._options]
        assert not unknown, f"{where}: flower has no option {unknown}"
    else:
        check_click_options(celery_group.commands[sub], rest, where)


def check_recovery_cli(argv: list[str], where: str) -> None:
    target = console_scripts()["recovery-cli"]
    module_name, attr = target.split(":")
    command: click.Command = getattr(importlib.import_module(module_name), attr)
    while argv and not argv[0].startswith("-"):
        assert isinstance(command, click.Group), f"{where}: {command.name} has no sub-commands"
        assert argv[0] in command.commands, f"{where}: recovery-cli has no command {argv[0]!r}"
        command, argv = command.commands[argv[0]], argv[1:]
    check_click_options(command, argv, where)


def check_command(argv: list[str], where: str) -> None:
    program = Path(argv[0]).name
    if program == "celery":
        assert shutil.which("celery", path=str(REPO / ".venv" / "bin")) or shutil.which(
            "celery"), "celery is not installed"
        check_celery(argv[1:], where)
    elif program == "recovery-cli":
        check_recovery_cli(argv[1:], where)
    elif program.startswith("python"):
        if argv[1] == "-m":
            assert importlib.util.find_spec(argv[2]) is not None, f"{where}: no module {argv[2]}"
        else:
            assert argv[1] == "-c", f"{where}: python runs a module (-m) or a snippet (-c)"
    else:
        pytest.fail(f"{where}: {program!r} is not one of our entry points")


def test_recovery_cli_is_a_console_script_of_the_package() -> None:
    assert console_scripts()["recovery-cli"] == "recovery.cli.main:main"


@pytest.mark.parametrize("name", ["worker", "beat", "flower", "serve"])
def test_procfile_commands_are_real(name: str) -> None:
    check_command(procfile()[name], f"Procfile {name}")


def test_compose_commands_are_real() -> None:
    services = compose()["services"]
    for name, service in services.items():
        argv = service.get("command")
        if argv is None:
            continue
        if Path(argv[0]).name in INFRA_TOOLS:
            continue
        check_command(argv, f"docker-compose {name}")
        assert service["image"] == "api-recovery:latest"
    for service in services.values():
        test = (service.get("healthcheck") or {}).get("test", [])
        if test and test[0] == "CMD" and Path(test[1]).name not in INFRA_TOOLS:
            check_command(test[1:], "docker-compose healthcheck")


def test_systemd_commands_are_real() -> None:
    commands = unit_commands()
    assert {unit for unit, _, _ in commands} >= {
        "api-recovery-worker@.service", "api-recovery-beat.service",
        "api-recovery-flower.service", "api-recovery-serve.service",
        "api-recovery-migrate.service"}
    for unit, key, argv in commands:
        if argv[0] == "/bin/sh":
            continue
        assert argv[0].startswith("/opt/api-recovery/.venv/bin/"), f"{unit}: {argv[0]}"
        check_command(argv, f"{unit} {key}")


def test_dockerfile_copies_what_exists_and_runs_an_entry_point() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    cmd = next(line for line in lines if line.startswith("CMD "))
    check_command(json.loads(cmd[4:]), "Dockerfile CMD")


def test_compose_has_the_required_services_persistence_and_auth() -> None:
    services = compose()["services"]
    assert set(services) >= {"redis", "postgres", "migrate", "worker", "beat", "flower", "serve"}
    assert services["redis"]["command"][1:3] == ["--appendonly", "yes"]
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert services["migrate"]["restart"] == "no"
    for name in ("worker", "beat", "flower", "serve"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    assert "replicas" not in (services["beat"].get("deploy") or {})
    auth = services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert auth.startswith("${FLOWER_BASIC_AUTH:?"), "Flower must refuse to start without auth"


def test_flower_never_runs_open() -> None:
    flower = procfile()["flower"]
    assert any(arg.startswith("--basic-auth=${FLOWER_BASIC_AUTH:?") for arg in flower)
    unit = (UNITS / "api-recovery-flower.service").read_text()
    assert 'test -n "$$FLOWER_BASIC_AUTH"' in unit
    assert "--basic-auth=${FLOWER_BASIC_AUTH}" in unit


def test_compose_publishes_every_port_on_loopback_only() -> None:
    services = compose()["services"]
    published = {name: service["ports"] for name, service in services.items()
                 if service.get("ports")}
    assert published == {"flower": ["127.0.0.1:5555:5555"], "serve": ["127.0.0.1:9808:9808"]}
    assert "expose" not in services["redis"] and "expose" not in services["postgres"]


def test_compose_passes_serve_token_and_its_healthcheck_sends_it() -> None:
    services = compose()["services"]
    assert services["serve"]["environment"]["SERVE_TOKEN"] == "${SERVE_TOKEN:-}"
    snippet = services["serve"]["healthcheck"]["test"][3]
    assert "os.environ.get('SERVE_TOKEN')" in snippet
    assert "'Authorization': 'Bearer ' + t" in snippet


def test_flower_and_serve_listen_on_loopback_outside_containers() -> None:
    assert "--address=127.0.0.1" in procfile()["flower"]
    assert "--host" not in procfile()["serve"]  # its default is 127.0.0.1
    flower_unit = (UNITS / "api-recovery-flower.service").read_text()
    assert "flower --address=127.0.0.1 --port=5555" in flower_unit
    serve_unit = (UNITS / "api-recovery-serve.service").read_text()
    assert "0.0.0.0" not in serve_unit.split("ExecStart=", 1)[1]
    assert "SERVE_TOKEN" in serve_unit


def test_the_readme_tells_operators_to_put_flower_behind_tls_and_set_serve_token() -> None:
    readme = (REPO / "README.md").read_text()
    production = readme.split("### Running in production", 1)[1].split("\n## ", 1)[0]
    assert "TLS" in production and "Flower" in production and "basic auth" in production
    assert "SERVE_TOKEN" in production and "127.0.0.1" in production
    assert "| `SERVE_TOKEN` |" in readme and "| `MAX_REQUEST_BYTES` |" in readme
    assert "\n## Security\n" in readme


PROMQL_WORDS = {
    "sum", "max", "min", "avg", "by", "without", "rate", "increase", "histogram_quantile",
    "topk", "le", "and", "or", "unless", "on", "ignoring",
}


def test_the_grafana_dashboard_only_queries_metrics_we_export() -> None:
    from recovery.telemetry.metrics import SPECS

    exported = set(SPECS) | {"circuit_breaker_state", "queue_depth", "dlq_depth"}
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\bby \([^)]*\)|\"[^\"]*\"", " ",
                          target["expr"])
            for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr):
                if name not in PROMQL_WORDS and not name.replace(".", "").isdigit():
                    queried.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert queried
    assert queried <= exported, queried - exported
    assert {"circuit_breaker_state", "api_calls_total", "dlq_depth"} <= queried


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_units_verify(tmp_path: Path) -> None:
    venv_bin = str(REPO / ".venv" / "bin")
    for unit in UNITS.iterdir():
        name = unit.name.replace("@.service", "@1.service")
        text = unit.read_text().replace("/opt/api-recovery/.venv/bin", venv_bin)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if "api-recovery" in line]
    assert not ours, "\n".join(ours)

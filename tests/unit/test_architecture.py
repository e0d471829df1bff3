"""The layering of DESIGN.md, enforced: imports only go down, and enqueueing stays light."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contract_holds() -> None:
    """`lint-imports` checks the [importlinter] contract in setup.cfg (layers, top to bottom:
    cli, demo, tasks, ops, engine, dlq/audit/state/telemetry, core, config)."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    result = subprocess.run([command, "--config", str(ROOT / "setup.cfg"), "--no-cache"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def printed_by(script: str) -> str:
    """What `script` prints in a fresh interpreter (its `sys.modules` is its own)."""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_enqueueing_does_not_import_the_engine() -> None:
    """A producer imports `recovery` and builds a job without loading the pipeline, a database
    engine, the Celery app or the beat schedule."""
    script = (
        "import sys, recovery\n"
        "from recovery.config.loader import load_registry\n"
        "from recovery.config.settings import get_settings\n"
        "from recovery.engine.producer import build_job\n"
        "registry = load_registry(get_settings())\n"
        "job = build_job(registry, 'primary-api', 'POST', '/orders', json={'id': 1})\n"
        "assert job.integration == 'primary-api'\n"
        "heavy = ['recovery.engine.pipeline', 'recovery.engine.runtime', 'recovery.celery_app',\n"
        "         'beat_schedule', 'recovery.audit.db', 'celery']\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    assert printed_by(script) == "[]"


def test_importing_the_celery_app_loads_no_beat_schedule_registry_or_beat_guard() -> None:
    """`celery -A recovery.celery_app worker|flower` and anything importing the app get the
    schedule only when beat starts (`beat_scheduler`)."""
    script = (
        "import sys\n"
        "import recovery.celery_app\n"
        "from recovery.config.loader import get_registry\n"
        "loaded = [name for name in ('beat_schedule', 'recovery.state.beatlock')\n"
        "          if name in sys.modules]\n"
        "print(loaded, get_registry.cache_info().currsize)\n"
    )
    assert printed_by(script) == "[] 0"


def test_no_lower_layer_imports_the_wired_celery_app() -> None:
    """The contract holds with no ignored import (issue 16: the DLQ published through the
    wired app)."""
    config = (ROOT / "setup.cfg").read_text()
    assert "ignore_imports" not in config

"""The order workflow's Python steps (examples/workflows.yaml and the demo's workflow phase).

`validate_order` is a validation (pure) and `save_order` a persistence step: it writes the
order's record once, as `{key}.json` in ORDER_STORE_DIR (default: `recovery-orders/` in the
system's temporary directory), and refuses to write an order that asks for a persistence
failure (`"fail_persist": true`), which the demo uses to show the charge being undone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class OrderError(ValueError):
    """The order cannot be processed as given."""


def validate_order(order: Any) -> dict[str, Any]:
    if not isinstance(order, dict):
        raise OrderError("The order must be a JSON object.")
    missing = [key for key in ("order_id", "amount", "email") if key not in order]
    if missing:
        raise OrderError(f"The order lacks {', '.join(missing)}.")
    amount = order["amount"]
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise OrderError(f"The order amount must be a positive whole number of cents, got "
                         f"{amount!r}.")
    return {"valid": True, "order_id": str(order["order_id"]), "amount": amount}


def store_dir() -> Path:
    root = os.environ.get("ORDER_STORE_DIR") or os.path.join(tempfile.gettempdir(),
                                                             "recovery-orders")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_order(inputs: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    if inputs.get("order", {}).get("fail_persist"):
        raise OrderError("The order store refused the record (the demo asked it to).")
    target = store_dir() / f"{idempotency_key.replace(':', '_')}.json"
    with target.open("x", encoding="utf-8") as handle:  # "x": a second write would fail
        json.dump(inputs, handle)
    return {"persisted": True, "record": target.name}

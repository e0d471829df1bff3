"""The names of the system's queues, in one place: routing, the DLQ, the monitor and the
deploy files all mean these."""

from __future__ import annotations

#: Integration calls and workflow steps.
WORK_QUEUE = "integrations"
#: Health checks and the capped replay, on a small worker of their own.
MAINTENANCE_QUEUE = "maintenance"
#: Dead letters: envelopes for operators and the replay, never consumed as tasks.
DLQ_QUEUE = "dlq"
#: Dead letters that cannot be replayed (malformed, tampered, over their replay cap).
QUARANTINE_QUEUE = "dlq.quarantine"
#: Every queue, in the order the monitor shows them.
ALL_QUEUES = (WORK_QUEUE, MAINTENANCE_QUEUE, DLQ_QUEUE, QUARANTINE_QUEUE)

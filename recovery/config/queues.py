"""The names of the system's queues and task modules, in one place: routing, the DLQ, the
monitor, the deploy files and the producer's callback check all mean these."""

from __future__ import annotations

#: Integration calls and workflow steps.
WORK_QUEUE = "integrations"
#: Health checks and the capped replay, on a small worker of their own.
MAINTENANCE_QUEUE = "maintenance"
#: Dead letters: envelopes for operators and the replay, never consumed as tasks.
DLQ_QUEUE = "dlq"
#: Dead letters that cannot be replayed (malformed, tampered, over their replay cap).
QUARANTINE_QUEUE = "dlq.quarantine"
#: The queues on the broker that workers consume.
WORK_QUEUES = (WORK_QUEUE, MAINTENANCE_QUEUE)
#: The DLQ-side lists, kept in the state store's Redis on any broker (`config.broker`).
DLQ_SIDE_QUEUES = (DLQ_QUEUE, QUARANTINE_QUEUE)
#: Every queue, in the order the monitor shows them.
ALL_QUEUES = WORK_QUEUES + DLQ_SIDE_QUEUES
#: The modules of this system's Celery tasks (a producer's callback may not name one).
TASK_MODULES = ("tasks.integration", "tasks.health", "tasks.dlq", "tasks.workflow")

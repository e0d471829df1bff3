"""The engine: the runtime (and the producer's lighter one, `producer_runtime`), the admission
gate, the HTTP call, fallbacks, the pipeline that runs one delivery, `outcome`, the one place
that writes a job's final status, `results`, which keeps final outcomes and sends callbacks, and
`workflows`, which runs multi-step workflows."""

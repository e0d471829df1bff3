"""The engine: the runtime, the admission gate, the HTTP call, fallbacks, the pipeline that
runs one delivery, and `outcome`, the one place that writes a job's final status."""

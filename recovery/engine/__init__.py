"""The engine: what runs a job or a workflow (runtime, gate, http, pipeline, workflows)."""

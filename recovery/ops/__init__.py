"""Operator surfaces above the engine: health checks, `serve`, the monitor, reports and the
web console (recovery.ops.console)."""

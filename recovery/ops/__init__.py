"""Operator surfaces that use the engine: for now the web console (recovery.ops.console).

The target layout (docs: DESIGN.md) moves health, serve, monitor and report here as well.
"""

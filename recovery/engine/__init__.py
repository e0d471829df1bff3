"""The engine: what one job does, from the gates to its final state."""

"""The demo, embedded mode, the simulator and the local fault server. Only the CLI imports
this package; the runtime never does."""

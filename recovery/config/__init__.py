"""Configuration, the bottom layer: settings from the environment, the integration models and
the YAML loader that builds them. Imports nothing else from `recovery`."""

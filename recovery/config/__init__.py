"""Configuration, the bottom layer: settings from the environment, the integration,
recovery-strategy and workflow models and the YAML loaders that build them. Imports nothing
else from `recovery`."""

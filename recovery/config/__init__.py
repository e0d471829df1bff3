"""Configuration: settings, integration and workflow models, the YAML loaders."""

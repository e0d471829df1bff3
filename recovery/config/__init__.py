"""Configuration: settings, the integration and strategy models, the YAML loaders."""

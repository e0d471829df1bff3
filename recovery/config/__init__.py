"""Configuration, the bottom layer: settings from the environment, the integration and
recovery-strategy models and the YAML loaders that build them. Imports nothing else from
`recovery`."""

"""Configuration: settings, and what the URLs in them name (brokers, state stores)."""

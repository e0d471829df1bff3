"""What the engine reports through: metrics, alerts, Sentry and the JSON log format."""

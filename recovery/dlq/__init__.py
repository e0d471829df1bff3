"""The dead-letter queue: envelopes, parking, listing, capped replay and quarantine."""

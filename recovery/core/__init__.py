"""Pure values and rules with no I/O: the message, errors, policy, strategies, outcomes."""

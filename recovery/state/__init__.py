"""Redis shared state with in-process twins (breaker, rate limit, results, ...)."""

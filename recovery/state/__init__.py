"""Redis-shared state, each with an in-process twin: circuit breaker, rate limit, budget,
idempotency, access tokens, job results and the beat lock. Every Lua script lives in
`state/lua/`."""

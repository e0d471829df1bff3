-- Header: ARGV[1] max deliveries, ARGV[2] '1' with a breaker step, ARGV[3] '1' with a budget
-- step. Steps in order: claim, rate limit, breaker acquire, budget note. Returns the replies
-- so far: { claim, wait, grant }.
local claim = idempotency_claim(take())
if claim[1] ~= 'claimed' or claim[2] > tonumber(ARGV[1]) then return { claim } end
local wait = rate_limit(take())
if wait ~= '0' then return { claim, wait } end
local grant = 0
if ARGV[2] == '1' then
    grant = breaker_acquire(take())
    if grant[1] == 0 then return { claim, wait, grant } end
end
if ARGV[3] == '1' then retry_budget(take()) end
return { claim, wait, grant }

-- Header: ARGV[1] '1' with a breaker record step, ARGV[2] '1' with an audit spool append at
-- the end; the claim release between them.
local recorded = 0
if ARGV[1] == '1' then recorded = breaker_record(take()) end
idempotency_release(take())
local spooled = 0
if ARGV[2] == '1' then spooled = audit_spool(take()) end
return { recorded, spooled }

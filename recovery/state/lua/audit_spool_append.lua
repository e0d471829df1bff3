-- KEYS[1] spool stream, KEYS[2] its alarm state (a hash); ARGV[1] the cap, ARGV[2..] one entry's
-- ops each. Appends in order, trimming the oldest entries beyond the cap. Returns
-- {length, crossed 80 % now (0/1), entries trimmed, first trim since the spool was low (0/1)}.
-- The dollar placeholders are filled in from recovery.audit.bounds when the script loads.
local cap = tonumber(ARGV[1])
local length = redis.call('XLEN', KEYS[1])
for i = 2, #ARGV do
    redis.call('XADD', KEYS[1], 'MAXLEN', cap, '*', 'ops', ARGV[i])
end
local added = #ARGV - 1
local trimmed = math.max(0, length + added - cap)
length = length + added - trimmed
local crossed, first_trim = 0, 0
if length >= math.floor(cap * ${filling_at}) then
    crossed = redis.call('HSETNX', KEYS[2], 'filling', '1')
    if trimmed > 0 then first_trim = redis.call('HSETNX', KEYS[2], 'trimmed', '1') end
    if crossed == 1 or first_trim == 1 then
        redis.call('EXPIRE', KEYS[2], ${state_ttl_s})
    end
elseif length < math.floor(cap * ${cleared_below}) then
    redis.call('DEL', KEYS[2])
end
return {length, crossed, trimmed, first_trim}

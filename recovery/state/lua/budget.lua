-- Cluster-wide retry budget for one integration, atomically, on the Redis server's clock.
--
-- KEYS[1]  first attempts: a HASH from slot start (ms) to the first attempts made in that slot
-- KEYS[2]  retries: a HASH from slot start (ms) to the retries scheduled in that slot
-- ARGV[1]  operation: note | charge | usage
-- ARGV[2]  the time in ms to decide at; empty means the server's clock (tests pin it)
-- ARGV[3]  window_ms     ARGV[4] slot_ms     ARGV[5] ratio     ARGV[6] floor
--
-- A slot that started at s counts while s > now - window_ms: the window slides one slot at a
-- time. A retry may be scheduled when, counting it, retries <= floor + ratio * first attempts.
--
-- note    -> "0"; records one first attempt in the current slot
-- charge  -> "0" when the retry was charged (recorded), else the milliseconds until the budget
--            has room, assuming nothing else is recorded meanwhile
-- usage   -> { first attempts, retries, retries allowed } in the current window; records nothing
--
-- Numbers go back as strings because Redis truncates Lua numbers to integers.

local first_key = KEYS[1]
local retry_key = KEYS[2]
local op = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
    local clock = redis.call('TIME')
    now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
end
local window = tonumber(ARGV[3])
local slot = tonumber(ARGV[4])
local ratio = tonumber(ARGV[5])
local floor = tonumber(ARGV[6])
local oldest = now - window
local current = string.format('%.0f', math.floor(now / slot) * slot)
local ttl = math.ceil(window + slot)

local function fmt(ms)
    return string.format('%.3f', ms)
end

local function allowance(firsts)
    return math.floor(floor + ratio * firsts + 1e-9)
end

-- Live slots as a list of { start, count } in ascending start order, and their total; slots
-- that left the window are deleted on the way.
local function live_slots(key)
    local flat = redis.call('HGETALL', key)
    local slots, total = {}, 0
    for i = 1, #flat, 2 do
        local start = tonumber(flat[i])
        if start > oldest then
            local count = tonumber(flat[i + 1])
            slots[#slots + 1] = { start, count }
            total = total + count
        else
            redis.call('HDEL', key, flat[i])
        end
    end
    table.sort(slots, function(a, b) return a[1] < b[1] end)
    return slots, total
end

local function firsts_after(slots, start)
    local total = 0
    for _, entry in ipairs(slots) do
        if entry[1] > start then
            total = total + entry[2]
        end
    end
    return total
end

-- When the oldest retry slots leave the window, is there room? Checked at each retry slot's
-- expiry, counting only the first attempts still in the window then.
local function wait_ms(firsts, retries, retried)
    local left = retried
    for _, entry in ipairs(retries) do
        left = left - entry[2]
        if left + 1 <= allowance(firsts_after(firsts, entry[1])) then
            return math.max(entry[1] + window - now, 1)
        end
    end
    return window
end

if op == 'note' then
    if redis.call('HINCRBY', first_key, current, 1) == 1 then
        live_slots(first_key)
    end
    redis.call('PEXPIRE', first_key, ttl)
    return '0'
end

local firsts, first_total = live_slots(first_key)
local retries, retry_total = live_slots(retry_key)
if op == 'charge' then
    if retry_total + 1 <= allowance(first_total) then
        redis.call('HINCRBY', retry_key, current, 1)
        redis.call('PEXPIRE', retry_key, ttl)
        return '0'
    end
    return fmt(wait_ms(firsts, retries, retry_total))
elseif op == 'usage' then
    return { first_total, retry_total, allowance(first_total) }
end
return redis.error_reply('unknown retry budget operation: ' .. tostring(op))

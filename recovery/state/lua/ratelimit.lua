-- Cluster-wide rate limiting for one integration, atomically, on the Redis server's clock.
--
-- KEYS[1]  sliding-window log: a ZSET whose members are unique per granted call and whose
--          scores are the grant times in milliseconds
-- KEYS[2]  shared "not before": the millisecond time before which nobody may call
-- KEYS[3]  why the integration is paused (pause, resume and usage only; same lifetime as KEYS[2])
-- ARGV[1]  operation: acquire | pause | paused_for | usage | resume
--
-- acquire     ARGV[2] window_ms, ARGV[3] max_requests, ARGV[4] unique member
--             -> "0" when a slot was granted (and recorded), else the milliseconds to wait
-- pause       ARGV[2] milliseconds, ARGV[3] reason -> the milliseconds the integration is now
--             paused for (the not-before only ever moves later; the reason moves with it)
-- paused_for  -> the milliseconds left on the not-before ("0" when none)
-- usage       ARGV[2] window_ms -> { slots used in the current window, paused milliseconds,
--             the pause's reason or "" }
-- resume      -> the milliseconds the pause it cleared had left ("0" when there was none)
--
-- Numbers go back as strings because Redis truncates Lua numbers to integers.

local log_key = KEYS[1]
local not_before_key = KEYS[2]
local op = ARGV[1]

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000

local function fmt(ms)
    return string.format('%.3f', ms)
end

local function paused_ms()
    local until_ms = tonumber(redis.call('GET', not_before_key))
    if until_ms and until_ms > now then
        return until_ms - now
    end
    return 0
end

if op == 'acquire' then
    local window = tonumber(ARGV[2])
    local limit = tonumber(ARGV[3])
    local paused = paused_ms()
    if paused > 0 then
        return fmt(paused)
    end
    redis.call('ZREMRANGEBYSCORE', log_key, '-inf', now - window)
    local used = redis.call('ZCARD', log_key)
    if used < limit then
        redis.call('ZADD', log_key, now, ARGV[4])
        redis.call('PEXPIRE', log_key, window)
        return '0'
    end
    -- A slot frees when the entry that would leave us exactly at the limit ages out. With a
    -- shrunken limit that is not the oldest entry, hence the index.
    local freeing = redis.call('ZRANGE', log_key, used - limit, used - limit, 'WITHSCORES')
    return fmt(math.max(tonumber(freeing[2]) + window - now, 1))
elseif op == 'pause' then
    local wanted = now + tonumber(ARGV[2])
    local current = tonumber(redis.call('GET', not_before_key))
    if not current or wanted > current then
        local ttl = math.ceil(wanted - now)
        redis.call('SET', not_before_key, fmt(wanted), 'PX', ttl)
        if KEYS[3] then
            redis.call('SET', KEYS[3], ARGV[3] or '', 'PX', ttl)
        end
    end
    return fmt(paused_ms())
elseif op == 'paused_for' then
    return fmt(paused_ms())
elseif op == 'usage' then
    local window = tonumber(ARGV[2])
    local used = redis.call('ZCOUNT', log_key, '(' .. fmt(now - window), '+inf')
    local paused = paused_ms()
    local reason = ''
    if paused > 0 and KEYS[3] then
        reason = redis.call('GET', KEYS[3]) or ''
    end
    return { used, fmt(paused), reason }
elseif op == 'resume' then
    local left = paused_ms()
    redis.call('DEL', not_before_key)
    if KEYS[3] then
        redis.call('DEL', KEYS[3])
    end
    return fmt(left)
end
return redis.error_reply('unknown rate limit operation: ' .. tostring(op))

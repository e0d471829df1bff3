-- Cluster-wide circuit breaker for one integration. Every decision is one atomic script that
-- reads the clock from the Redis server (TIME), so hosts with skewed clocks still agree.
--
-- The file holds several scripts. A line "--@@ <name>" starts a section; the section "common"
-- is prepended to every other section, which becomes one script loaded with register_script.
--
-- KEYS[1] is a hash with the whole state of one breaker (one key, so it also fits a cluster
-- slot):
--   state       closed | open | half_open                  (missing key = closed)
--   epoch       bumped by every transition; a permit carries the epoch it was granted in, and
--               a record from an older epoch is ignored (a call that started before the breaker
--               tripped cannot trip, close or re-open it afterwards)
--   failures    consecutive counting failures while closed (kept while open, for display)
--   opened_at   ms when the breaker last opened
--   open_until  ms when the open period ends (the next acquire then moves to half_open)
--   half_ok     successful probes in the current half-open period
--   failed_probes  failed probes in a row (reset by closing); the open time grows with it
--   probes      probe permits in flight: "token=lease_until_ms;token=lease_until_ms"
--   w0 .. w9    ring of failure-rate buckets: "bucket_index:calls:failures"
--
-- Integers are written with string.format('%d') because Lua's tostring of large numbers
-- switches to exponent notation. Replies are arrays; a reply that made a transition ends with
-- { from, to, reason, at_ms }.

--@@ common
local KEY = KEYS[1]
local BUCKETS = 10

local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(x)
    return string.format('%d', x)
end

-- Probe leases still running at `now`: table token -> lease end, their count, earliest end.
local function live_probes(text, now)
    local probes, count, earliest = {}, 0, nil
    if text then
        for token, lease in string.gmatch(text, '([^;=]+)=(%d+)') do
            local ends = tonumber(lease)
            if ends > now then
                probes[token] = ends
                count = count + 1
                if earliest == nil or ends < earliest then
                    earliest = ends
                end
            end
        end
    end
    return probes, count, earliest
end

local function format_probes(probes)
    local parts = {}
    for token, ends in pairs(probes) do
        parts[#parts + 1] = token .. '=' .. int(ends)
    end
    return table.concat(parts, ';')
end

local function bucket_of(now, window_ms)
    return math.floor(now / math.max(1, math.ceil(window_ms / BUCKETS)))
end

local function window_names()
    local names = {}
    for slot = 0, BUCKETS - 1 do
        names[#names + 1] = 'w' .. slot
    end
    return names
end

-- Calls and failures in the buckets of the last window.
local function window_totals(now, window_ms)
    local current = bucket_of(now, window_ms)
    local values = redis.call('HMGET', KEY, unpack(window_names()))
    local calls, failures = 0, 0
    for _, value in ipairs(values) do
        if value then
            local index, c, f = string.match(value, '^(%d+):(%d+):(%d+)$')
            if index and tonumber(index) > current - BUCKETS then
                calls = calls + tonumber(c)
                failures = failures + tonumber(f)
            end
        end
    end
    return calls, failures
end

local function window_add(now, window_ms, failed)
    local current = bucket_of(now, window_ms)
    local field = 'w' .. (current % BUCKETS)
    local calls, failures = 0, 0
    local value = redis.call('HGET', KEY, field)
    if value then
        local index, c, f = string.match(value, '^(%d+):(%d+):(%d+)$')
        if index and tonumber(index) == current then
            calls, failures = tonumber(c), tonumber(f)
        end
    end
    calls = calls + 1
    if failed then
        failures = failures + 1
    end
    redis.call('HSET', KEY, field, int(current) .. ':' .. int(calls) .. ':' .. int(failures))
end

-- The open time after `failed` failed probes in a row:
-- min(reset_ms * factor ^ failed, cap_ms), floored. Limits.open_ms in types.py is its twin;
-- keep the arithmetic identical (a power that overflows is inf here, so the cap wins).
local function open_ms_for(failed, reset_ms, factor, cap_ms)
    return math.floor(math.min(reset_ms * factor ^ failed, cap_ms))
end

local function touch(ttl_ms, now, open_until)
    local extra = 0
    if open_until and open_until > now then
        extra = open_until - now
    end
    redis.call('PEXPIRE', KEY, int(ttl_ms + extra))
end

local function open_circuit(now, open_ms, epoch, ttl_ms)
    redis.call('HSET', KEY, 'state', 'open', 'epoch', int(epoch + 1), 'opened_at', int(now),
        'open_until', int(now + open_ms), 'half_ok', '0', 'probes', '')
    redis.call('HDEL', KEY, unpack(window_names()))
    touch(ttl_ms, now, now + open_ms)
end

local function close_circuit(now, epoch, ttl_ms)
    redis.call('HSET', KEY, 'state', 'closed', 'epoch', int(epoch + 1), 'failures', '0',
        'half_ok', '0', 'probes', '', 'failed_probes', '0')
    redis.call('HDEL', KEY, 'opened_at', 'open_until', unpack(window_names()))
    touch(ttl_ms, now, nil)
end

--@@ acquire
-- ARGV: token, lease_ms, max_probes, reset_ms, ttl_ms
-- -> { granted 0|1, probe 0|1, epoch, wait_ms, state [, from, to, reason, at_ms] }
local token = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local max_probes = tonumber(ARGV[3])
local reset_ms = tonumber(ARGV[4])
local ttl_ms = tonumber(ARGV[5])

local h = redis.call('HMGET', KEY, 'state', 'epoch', 'open_until', 'probes')
local state = h[1] or 'closed'
local epoch = tonumber(h[2]) or 0
if state == 'closed' then
    return { 1, 0, epoch, 0, 'closed' }
end

local now = now_ms()
local moved = false
if state == 'open' then
    local open_until = tonumber(h[3]) or 0
    if now < open_until then
        return { 0, 0, epoch, open_until - now, 'open' }
    end
    epoch = epoch + 1
    redis.call('HSET', KEY, 'state', 'half_open', 'epoch', int(epoch), 'half_ok', '0')
    h[4] = false
    moved = true
end

local probes, count, earliest = live_probes(h[4], now)
local granted, wait_ms = 0, 0
if count < max_probes then
    probes[token] = now + lease_ms
    granted = 1
else
    wait_ms = math.min(earliest - now, reset_ms)
end
redis.call('HSET', KEY, 'probes', format_probes(probes))
touch(ttl_ms, now, nil)
if moved then
    return { granted, granted, epoch, wait_ms, 'half_open', 'open', 'half_open',
        'reset_timeout_elapsed', now }
end
return { granted, granted, epoch, wait_ms, 'half_open' }

--@@ record
-- ARGV: epoch, probe token ('' for a closed-state permit), outcome success|failure|neutral,
--       threshold, failure_rate (negative = off), minimum_calls, window_ms, reset_ms,
--       success_threshold, ttl_ms, reset_factor, max_reset_ms
-- -> { applied 0|1 [, from, to, reason, at_ms] }
local permit_epoch = tonumber(ARGV[1])
local token = ARGV[2]
local outcome = ARGV[3]
local threshold = tonumber(ARGV[4])
local failure_rate = tonumber(ARGV[5])
local minimum_calls = tonumber(ARGV[6])
local window_ms = tonumber(ARGV[7])
local reset_ms = tonumber(ARGV[8])
local success_threshold = tonumber(ARGV[9])
local ttl_ms = tonumber(ARGV[10])
local reset_factor = tonumber(ARGV[11])
local max_reset_ms = tonumber(ARGV[12])

local h = redis.call('HMGET', KEY, 'state', 'epoch', 'failures', 'half_ok', 'probes',
    'failed_probes')
local failed_probes = tonumber(h[6]) or 0
local state = h[1] or 'closed'
local epoch = tonumber(h[2]) or 0
if permit_epoch ~= epoch then
    return { 0 }
end
local now = now_ms()

if token ~= '' then
    if state ~= 'half_open' then
        return { 0 }
    end
    local probes = live_probes(h[5], now)
    probes[token] = nil
    if outcome == 'failure' then
        failed_probes = failed_probes + 1
        redis.call('HSET', KEY, 'failed_probes', int(failed_probes))
        open_circuit(now, open_ms_for(failed_probes, reset_ms, reset_factor, max_reset_ms),
            epoch, ttl_ms)
        return { 1, 'half_open', 'open', 'probe_failed', now }
    end
    if outcome == 'success' then
        local ok = (tonumber(h[4]) or 0) + 1
        if ok >= success_threshold then
            close_circuit(now, epoch, ttl_ms)
            return { 1, 'half_open', 'closed', 'probe_succeeded', now }
        end
        redis.call('HSET', KEY, 'half_ok', int(ok))
    end
    redis.call('HSET', KEY, 'probes', format_probes(probes))
    return { 1 }
end

if state ~= 'closed' then
    return { 0 }
end
if outcome == 'neutral' then
    return { 1 }
end
local failed = outcome == 'failure'
local failures = 0
if failed then
    failures = (tonumber(h[3]) or 0) + 1
end
redis.call('HSET', KEY, 'failures', int(failures))
window_add(now, window_ms, failed)

local reason = nil
if failed and failures >= threshold then
    reason = string.format('consecutive_failures=%d', failures)
elseif failure_rate >= 0 then
    local calls, fails = window_totals(now, window_ms)
    if calls >= minimum_calls and fails / calls >= failure_rate then
        reason = string.format('failure_rate=%.2f over %d calls', fails / calls, calls)
    end
end
if reason then
    open_circuit(now, open_ms_for(failed_probes, reset_ms, reset_factor, max_reset_ms), epoch,
        ttl_ms)
    return { 1, 'closed', 'open', reason, now }
end
touch(ttl_ms, now, nil)
return { 1 }

--@@ force
-- ARGV: action open|close, open_ms, ttl_ms, reason -> { 1 [, from, to, reason, at_ms] }
-- Forcing the state the breaker is already in still restarts it (fresh open period, or
-- cleared counters) but reports no transition.
local action = ARGV[1]
local open_ms = tonumber(ARGV[2])
local ttl_ms = tonumber(ARGV[3])
local reason = ARGV[4]

local h = redis.call('HMGET', KEY, 'state', 'epoch')
local state = h[1] or 'closed'
local epoch = tonumber(h[2]) or 0
local now = now_ms()
local target = 'closed'
if action == 'open' then
    target = 'open'
    open_circuit(now, open_ms, epoch, ttl_ms)
else
    close_circuit(now, epoch, ttl_ms)
end
if state == target then
    return { 1 }
end
return { 1, state, target, reason, now }

--@@ snapshot
-- ARGV: window_ms
-- -> { state, failures, opened_at_ms, open_until_ms, probes_in_flight, window_calls,
--      window_failures, now_ms, failed_probes }   (read only; an elapsed open period is reported as open with
--                                    no time left: the next acquire moves it to half_open)
local window_ms = tonumber(ARGV[1])
local h = redis.call('HMGET', KEY, 'state', 'failures', 'opened_at', 'open_until', 'probes',
    'failed_probes')
local now = now_ms()
local _, count = live_probes(h[5], now)
local calls, fails = window_totals(now, window_ms)
return { h[1] or 'closed', tonumber(h[2]) or 0, tonumber(h[3]) or -1, tonumber(h[4]) or -1,
    count, calls, fails, now, tonumber(h[6]) or 0 }

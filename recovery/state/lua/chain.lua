-- The driver of a chain (`recovery.state.scripts.run_chain`): runs its steps in the order
-- given and stops after the first whose reply says not to go on. `steps` lists each step's
-- function and the name of its test in `go_on`. ARGV opens with one (key count, argument
-- count, test argument) triple per step, then every step's arguments in order; KEYS holds
-- every step's keys in order, and each step gets its own share as its KEYS and ARGV.
-- Returns the replies of the steps that ran.
local steps = ${steps}
local go_on = {
    any = function() return true end,
    -- a wait in ms, as a string: '0' is no wait
    zero = function(reply) return reply == '0' end,
    -- a breaker grant: { 1, ... } granted, { 0, ... } refused
    granted = function(reply) return reply[1] ~= 0 end,
    -- an idempotency claim { answer, deliveries }, within `max` deliveries
    claimed = function(reply, max)
        return reply[1] == 'claimed' and reply[2] <= tonumber(max)
    end,
}
local k, a = 1, 3 * #steps + 1
local replies = {}
for i, step in ipairs(steps) do
    local nk, na = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
    local reply = step[1](slice(KEYS, k, nk), slice(ARGV, a, na))
    k, a = k + nk, a + na
    if reply == nil then reply = false end
    replies[i] = reply
    if not go_on[step[2]](reply, ARGV[3 * i]) then break end
end
return replies

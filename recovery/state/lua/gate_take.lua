-- Every step's keys and arguments are counted from its ScriptCall (`_run`): ARGV holds the
-- driver's own header, then one (key count, argument count) pair per step in the order the
-- driver takes them, then the steps' arguments. `take()` hands the next step its share.
local c, k, a = ${first_count}, 1, ${first_arg}
local function take()
    local nk, na = tonumber(ARGV[c]), tonumber(ARGV[c + 1])
    c = c + 2
    local ks, as = slice(KEYS, k, nk), slice(ARGV, a, na)
    k, a = k + nk, a + na
    return ks, as
end

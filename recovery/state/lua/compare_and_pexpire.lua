-- KEYS[1] a lock key; ARGV[1] the owner's token, ARGV[2] the new TTL in ms. Extends the
-- lock only while the token still owns it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0

-- KEYS[1] a lock key; ARGV[1] the owner's token. Deletes the key only while the token
-- still owns it (a lock that expired and was taken by another owner is left alone).
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0

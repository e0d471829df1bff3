-- KEYS[1] fingerprint key; ARGV[1] fingerprint, ARGV[2] ttl ms. 1: this request may use the
-- key (first use, or the same request again); 0: the key was used with another request.
local known = redis.call('GET', KEYS[1])
if known then return known == ARGV[1] and 1 or 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1

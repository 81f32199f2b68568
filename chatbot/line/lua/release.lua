-- A thread lock is released only by its holder (`token`): one that expired and was taken by
-- another turn stays that turn's.
-- KEYS: lock
-- ARGV: token
if redis.call('GET', lock) == token then return redis.call('DEL', lock) end
return 0

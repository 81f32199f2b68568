-- The worker's heartbeat for a running request, which also says whether to stop: 0 go on
-- (the heartbeat, the record and the thread lock, if still held with `lock_token`, renewed),
-- 1 cancelled, 2 the client is gone (its web process died, or it left a resumable request and
-- did not come back in time), 3 the request was ended elsewhere (declared lost).
-- include: helpers
-- KEYS: info, beat, lock
-- ARGV: heartbeat_ttl, info_ttl, lock_ttl_ms, lock_token, now
local state, cancel = unpack(redis.call('HMGET', info, 'state', 'cancel'))
if state ~= 'running' then return 3 end
if cancel then return 1 end
if lib.client_gone(info, tonumber(now)) then return 2 end
redis.call('SET', beat, 1, 'EX', heartbeat_ttl)
redis.call('EXPIRE', info, info_ttl)
if lock_token ~= '' and redis.call('GET', lock) == lock_token then
  redis.call('PEXPIRE', lock, lock_ttl_ms)
end
return 0

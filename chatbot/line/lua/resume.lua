-- The client of a request came back through the web process with `lease`: while the request
-- is queued or running, its events ring there and it no longer waits to be given up.
-- Returns its state (nil: unknown).
-- KEYS: info
-- ARGV: lease, lease_ttl
local state = redis.call('HGET', info, 'state')
if state == 'queued' or state == 'running' then
  redis.call('SET', KEY.lease .. lease, 1, 'EX', lease_ttl)
  redis.call('HSET', info, 'lease', lease)
  redis.call('HDEL', info, 'detached_until')
end
return state

-- A resumable request's client left, said by the web process holding its lease: it waits
-- until `until_time` for the client to come back. A client that came back through another
-- process meanwhile holds the lease, and this does nothing (0).
-- KEYS: info
-- ARGV: lease, until_time
local state, holder = unpack(redis.call('HMGET', info, 'state', 'lease'))
if (state ~= 'queued' and state ~= 'running') or holder ~= lease then return 0 end
redis.call('HSET', info, 'detached_until', until_time)
return 1

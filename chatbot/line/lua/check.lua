-- A waiting client's look at its request, deciding nothing but saying what is due:
-- 'vanished' (no record: the store restarted), 'overdue' (still queued past queue_timeout:
-- to expire), 'abandoned' (still queued, but its client left beyond its grace or its web
-- process died: to be cancelled; a resumable request's grace starts when its process is found
-- gone), 'dead' (running, but its heartbeat stopped: to be declared lost), 'ended' (moved on:
-- its final event is in its stream), else 'waiting' or 'running'.
-- include: helpers
-- KEYS: info, beat
-- ARGV: now, queue_timeout
local state = redis.call('HGET', info, 'state')
if not state then return 'vanished' end
if state == 'queued' then
  if lib.overdue(info, tonumber(now), queue_timeout) then return 'overdue' end
  if lib.client_gone(info, tonumber(now)) then return 'abandoned' end
  return 'waiting'
end
if state == 'running' then
  if redis.call('EXISTS', beat) == 0 then return 'dead' end
  return 'running'
end
return 'ended'

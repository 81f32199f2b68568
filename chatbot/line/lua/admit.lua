-- A request takes a place in line, all or nothing: refused (0) when `max_queue` wait already,
-- refused (-2) when its asker has `max_per_asker` requests waiting or running already (those
-- its client left beyond their grace not counted; 0: no such bound), refused (-1) when its id
-- has a record or a stream already (a reused id never joins another request's events). Else
-- it gets its place in the fair order, its record, its job, the web process's lease renewed,
-- its Celery task message pushed (`task`, if not ''), and SSE listeners hear: everyone's place
-- if it went in ahead of others, else the depth. Returns its position (1 = next). A request
-- the same as one still waiting or running (`same`, if not '': the same asker and request, a
-- retry) takes no place: the first one's id is returned, for its client to join. `band` 1
-- (batch) places it after every interactive request (see lib.fair_score).
-- include: helpers
-- KEYS: waiting, info, stream, lease, fair, job_key, task_list, asked
-- ARGV: max_queue, request_id, fields, ttl, position_fmt, queue_channel, depth_fmt, lease_ttl
-- ARGV: channel, asker, cost, job, task, max_per_asker, now, same, band
if redis.call('EXISTS', info) == 1 or redis.call('EXISTS', stream) == 1 then return -1 end
if same ~= '' then
  local first = redis.call('GET', KEY.same .. same)
  if first then
    local state = redis.call('HGET', KEY.req .. first, 'state')
    if (state == 'queued' or state == 'running')
        and redis.call('HGET', KEY.req .. first, 'same') == same then
      return first
    end
  end
end
local waiting_before = redis.call('ZCARD', waiting)
if waiting_before >= tonumber(max_queue) then return 0 end
local held = 0  -- the asker's requests in line or running
for _, id in ipairs(redis.call('SMEMBERS', asked)) do
  if lib.holds_place(KEY.req .. id, tonumber(now)) then
    held = held + 1
  else
    redis.call('SREM', asked, id)
  end
end
if tonumber(max_per_asker) > 0 and held >= tonumber(max_per_asker) then return -2 end
local busy = held > 0
redis.call('SADD', asked, request_id)
redis.call('EXPIRE', asked, ttl)
redis.call('ZADD', waiting, lib.fair_score(fair, asker, tonumber(cost), waiting_before == 0, busy,
                                           tonumber(band)), request_id)
redis.call('HSET', info, unpack(cjson.decode(fields)))
redis.call('EXPIRE', info, ttl)
if same ~= '' then redis.call('SET', KEY.same .. same, request_id, 'EX', ttl) end
redis.call('SET', job_key, job, 'EX', ttl)
redis.call('SET', lease, 1, 'EX', lease_ttl)
if task ~= '' then redis.call('LPUSH', task_list, task) end
local position = redis.call('ZRANK', waiting, request_id) + 1
redis.call('PUBLISH', channel, string.format(position_fmt, position))
if position <= waiting_before then
  lib.announce(waiting, queue_channel, position_fmt, depth_fmt)
else
  redis.call('PUBLISH', queue_channel, string.format(depth_fmt, waiting_before + 1))
end
return position

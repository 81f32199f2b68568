-- A worker takes the head of the line: the first request there that is still queued, whose
-- client is still there and that has not waited too long (the others end here, as cancelled
-- or expired, their clients told, their tokens' reservations given back, and are not run).
-- The one taken runs: its heartbeat starts, it joins the running set, its client hears
-- `started`, and the worker gets its job and, when free, its thread's lock (token
-- `lock_token`). The fair order's clock moves to its turn, and the line is announced.
-- take_task = '1': one task message is taken off the broker's list `task_list` too (a worker
-- running a second request in one task consumes that request's task, see
-- chatbot/worker/tasks.py). `now`: the time, or 'now' for Redis's own (a claim sent behind a
-- blocking wait runs later than it was sent). Returns {'run', id, seconds waited, 1 if it
-- holds the lock, job, lock key, how it was picked: 'fair', 'aged', 'warm' or 'model'}, or
-- {'empty'}.
-- Which request is taken (pick): the head, but a batch request whose turn has come and that has
-- waited `batch_wait` seconds goes before the interactive ones (0: never; ageing), and within
-- the first `warm_window` of the head's band one whose thread the host served last (`warm`:
-- its last `warm_slots` session|model, newest first; its prompt is still cached there) on the
-- model it has loaded (the newest's), else one for that model, else a warm one on another
-- model, goes first, unless the head has been passed `warm_passes` times already (each
-- request passed over counts one; 0: the head, always).
-- include: helpers
-- KEYS: waiting, started, fair, task_list, warm
-- ARGV: now, heartbeat_ttl, queue_timeout, started_fmt, started_notice, gone_event, gone_notice
-- ARGV: expired_event, expired_notice, ttl, queue_channel, position_fmt, depth_fmt, lock_token
-- ARGV: lock_ttl_ms, take_task, tally_ttl, batch_wait, warm_passes, warm_window, warm_slots
local clock, stamp = tonumber(now), now
if not clock then
  local t = redis.call('TIME')
  clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
  stamp = string.format('%.6f', clock)
end

local function thread_of(id)
  local session, model = unpack(redis.call('HMGET', KEY.req .. id, 'session_id', 'model'))
  return tostring(session) .. '|' .. tostring(model), tostring(model)
end

local function pick(head_id, head_score)
  if tonumber(batch_wait) > 0 and lib.band_of(head_score) == 0 then
    local batch = redis.call('ZRANGEBYSCORE', waiting, lib.BATCH_FLOOR, '+inf', 'LIMIT', 0, 1)
    if batch[1] and lib.overdue(KEY.req .. batch[1], clock, batch_wait) then
      return batch[1], 'aged'
    end
  end
  local passes = tonumber(warm_passes)
  if passes == 0 or tonumber(redis.call('HGET', KEY.req .. head_id, 'passed') or '0') >= passes then
    return head_id, 'fair'
  end
  local served = redis.call('LRANGE', warm, 0, -1)
  if not served[1] then return head_id, 'fair' end
  local loaded, is_warm = string.match(served[1], '|(.*)$'), {}
  for _, thread in ipairs(served) do is_warm[thread] = true end
  local window = redis.call('ZRANGE', waiting, 0, math.max(1, tonumber(warm_window)) - 1,
                            'WITHSCORES')
  -- A warm thread on the loaded model, else any request for it (no load: a load costs more
  -- than a cached prompt saves), else a warm thread on another model.
  local band, chosen, same_model, warm_elsewhere = lib.band_of(head_score), nil, nil, nil
  for i = 1, #window, 2 do
    if lib.band_of(window[i + 1]) ~= band then break end
    local thread, model = thread_of(window[i])
    if is_warm[thread] and model == loaded then chosen = i break end
    if not same_model and model == loaded then same_model = i end
    if not warm_elsewhere and is_warm[thread] then warm_elsewhere = i end
  end
  local how = (chosen and 'warm') or (same_model and 'model') or (warm_elsewhere and 'warm')
    or 'fair'
  chosen = chosen or same_model or warm_elsewhere or 1
  for i = 1, chosen - 2, 2 do redis.call('HINCRBY', KEY.req .. window[i], 'passed', 1) end
  return window[chosen], chosen == 1 and 'fair' or how
end

local result = {'empty'}
while true do
  local head = redis.call('ZRANGE', waiting, 0, 0, 'WITHSCORES')
  if not head[1] then break end
  local id, how = pick(head[1], head[2])
  local info = KEY.req .. id
  redis.call('ZREM', waiting, id)
  redis.call('HSET', fair, '#clock', lib.turn_of(head[2]))
  local job = redis.call('GET', KEY.job .. id)
  redis.call('DEL', KEY.job .. id)
  if redis.call('HGET', info, 'state') == 'queued' then
    local too_long, waited = lib.overdue(info, clock, queue_timeout)
    waited = string.format('%.6f', waited)
    local verdict, event, notice = 'run', string.format(started_fmt, waited), started_notice
    if lib.client_gone(info, clock) then
      verdict, event, notice = 'cancelled', gone_event, gone_notice
    elseif too_long then
      verdict, event, notice = 'expired', expired_event, expired_notice
    end
    if verdict == 'run' then
      redis.call('SET', KEY.beat .. id, 1, 'EX', heartbeat_ttl)
      redis.call('HSET', info, 'state', 'running', 'started_at', stamp)
      redis.call('SADD', started, id)
    else
      redis.call('HSET', info, 'state', verdict, 'finished_at', stamp)
      lib.settle(info, 0, tally_ttl)
    end
    lib.append(info, KEY.relay .. id, id, event, ttl, verdict ~= 'run')
    redis.call('PUBLISH', redis.call('HGET', info, 'channel') or id, notice)
    if verdict == 'run' then
      local session, model = unpack(redis.call('HMGET', info, 'session_id', 'model'))
      if tonumber(warm_passes) > 0 then
        local thread = tostring(session) .. '|' .. tostring(model)
        redis.call('LREM', warm, 0, thread)
        redis.call('LPUSH', warm, thread)
        redis.call('LTRIM', warm, 0, math.max(0, tonumber(warm_slots) - 1))
        redis.call('EXPIRE', warm, ttl)
      end
      local lock, locked = KEY.thread .. tostring(session) .. ':' .. tostring(model), 0
      if redis.call('SET', lock, lock_token, 'NX', 'PX', lock_ttl_ms) then locked = 1 end
      result = {'run', id, waited, locked, job or '', lock, how}
      if take_task == '1' then redis.call('RPOP', task_list) end
      break
    end
  end
end
lib.announce(waiting, queue_channel, position_fmt, depth_fmt)
return result

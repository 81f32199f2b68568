-- Helpers of the line's scripts, included by those whose header says `-- include: helpers`.
-- KEY, the key prefixes of chatbot/redis_keys.py, is defined before this.

local BELL_LENGTH, BELL_TTL = 1000, 120  -- rings a doorbell keeps unread (about), and how long
local SEQ_SPAN = 4194304  -- arrival numbers within one turn of the fair order (a score's low part)
local BAND_TURNS = 1073741824  -- turns of one priority band: a batch request's score is past them

local lib = {}

-- Every waiting request that an SSE client listens to (KEY.listening: request id -> how many
-- listen) hears its position, and the queue channel the depth. Only listeners, found without
-- walking the line: ten thousand clients hanging up must not cost ten thousand squared. A
-- request no longer waiting leaves the registry (its listeners' web process may have died).
function lib.announce(waiting_key, queue_channel, position_fmt, depth_fmt)
  for _, id in ipairs(redis.call('HKEYS', KEY.listening)) do
    local rank = redis.call('ZRANK', waiting_key, id)
    if rank then
      local channel = redis.call('HGET', KEY.req .. id, 'channel') or id
      redis.call('PUBLISH', channel, string.format(position_fmt, rank + 1))
    else
      local state = redis.call('HGET', KEY.req .. id, 'state')
      if state and state ~= 'queued' then redis.call('HDEL', KEY.listening, id) end
    end
  end
  redis.call('PUBLISH', queue_channel,
             string.format(depth_fmt, redis.call('ZCARD', waiting_key)))
end

-- A relay event is appended to the request's stream, and the doorbell of the web process
-- waiting for it (chatbot/line/relay.py) rings with the event, its id and the id of the ring
-- before it (field `rung`), so that the hub hands it over without reading the stream unless
-- it sees a gap. A `quiet` request (its client waits for the whole reply) rings only for its
-- final event.
function lib.append(info_key, stream, request_id, event, ttl, final)
  local id = redis.call('XADD', stream, '*', 'e', event)
  redis.call('EXPIRE', stream, ttl)
  local lease, quiet, rung = unpack(redis.call('HMGET', info_key, 'lease', 'quiet', 'rung'))
  if lease and (final or not quiet) then
    local bell = KEY.bell .. lease
    redis.call('XADD', bell, 'MAXLEN', '~', BELL_LENGTH, '*', 'r', request_id, 'i', id,
               'p', rung or '0-0', 'e', event)
    redis.call('EXPIRE', bell, BELL_TTL)
    redis.call('HSET', info_key, 'rung', id)
  end
end

-- The line's order is start-time fair queuing. Each asker (a key, else a session) has its
-- next turn in the fair hash; a request starts at the later of that turn and the clock (the
-- turn of the request last taken), and moves the asker's turn on by its cost. So an asker
-- with one request waits behind at most one request of each other asker, however many they
-- queued, and requests of equal turn keep their arrival order (the score's low part). An
-- asker that has a request in line or running already (`busy`) yields its turn's ties: its
-- request starts half a turn later, so another asker's one request waits for the request
-- running at most, not also for the busy asker's next. Cost 0: every request has turn 0,
-- first come, first served. The hash is reset when the line is empty, which keeps the
-- numbers small. A request of band 1 (batch) comes after every request of band 0 (interactive)
-- that waits (its score is BAND_TURNS turns on); within a band, the same turns.
function lib.fair_score(fair_key, asker, cost, was_empty, busy, band)
  if was_empty then redis.call('DEL', fair_key) end
  local seq = redis.call('HINCRBY', fair_key, '#seq', 1) % SEQ_SPAN
  local clock = tonumber(redis.call('HGET', fair_key, '#clock') or '0')
  local turn = math.max(clock, tonumber(redis.call('HGET', fair_key, 'a:' .. asker) or '0'))
  redis.call('HSET', fair_key, 'a:' .. asker, turn + cost)
  if busy then turn = turn + math.floor(cost / 2) end
  return (turn + band * BAND_TURNS) * SEQ_SPAN + seq
end

-- The turn a score was given, within its band (the fair order's clock moves to it when the
-- request is taken), and its band.
function lib.turn_of(score)
  return math.floor(tonumber(score) / SEQ_SPAN) % BAND_TURNS
end

function lib.band_of(score)
  return math.floor(math.floor(tonumber(score) / SEQ_SPAN) / BAND_TURNS)
end

-- Where band 1 starts in the line's scores.
lib.BATCH_FLOOR = BAND_TURNS * SEQ_SPAN

-- Whether a request's client has gone for good. A resumable request (field `resumable`: its
-- grace in seconds) whose client left, or whose web process died, waits that long for the
-- client to come back (`detached_until`) before it counts as gone.
function lib.client_gone(info_key, now)
  local lease, detached, grace = unpack(redis.call('HMGET', info_key, 'lease',
                                                   'detached_until', 'resumable'))
  if detached then return now > tonumber(detached) end
  if lease and redis.call('EXISTS', KEY.lease .. lease) == 0 then
    if tonumber(grace or '0') > 0 then
      redis.call('HSET', info_key, 'detached_until', now + tonumber(grace))
      return false
    end
    return true
  end
  return false
end

-- Whether a request still holds its place in the line (or its worker): queued or running, and
-- not left by its client beyond its grace (a resumable request's, see client_gone).
function lib.holds_place(info_key, now)
  local state = redis.call('HGET', info_key, 'state')
  if state ~= 'queued' and state ~= 'running' then return false end
  return not lib.client_gone(info_key, now)
end

-- A request's tokens settled against its asker's hour (see chatbot/api/quota.py) as it ends:
-- `used` counted and its reservation given back.
function lib.settle(info_key, used, kept)
  local key, reserved = unpack(redis.call('HMGET', info_key, 'tally_key', 'reserved'))
  if not key then return end
  local change = used - tonumber(reserved or '0')
  if change ~= 0 then
    redis.call('INCRBY', key, change)
    redis.call('EXPIRE', key, kept)
  end
end

-- Whether a waiting request has waited too long to start: the one place that decides it.
function lib.overdue(info_key, now, queue_timeout)
  local queued_at = tonumber(redis.call('HGET', info_key, 'queued_at')) or now
  return now - queued_at > tonumber(queue_timeout), math.max(0, now - queued_at)
end

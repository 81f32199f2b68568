-- A request moves from one of `from_states` (comma separated) to `to_state`, once: a request
-- in any other state is left as it is and {0, its state} returned (a second ending, a late
-- worker, a redelivered task all find it moved). On the move: its final event is appended and
-- rung and its SSE notice published, exactly once; it leaves the line (its job deleted, and
-- the line announced) or the running set; its heartbeat ends; the thread lock `lock` is
-- released if it still holds `lock_token`. Returns {1, the state it left, 1 if it left the
-- line, how many wait in line now}.
-- only_if_dead = '1': a running request moves only if its heartbeat has stopped (a live worker
-- is not declared lost). cancel_running = '1': a running request is flagged for cancel instead
-- (its worker ends it within a beat). Its tokens are settled with the move (lib.settle): none
-- if it never ran, `tally` if its worker says how many (else its reservation stays counted).
-- `charge` (if not ''): what it cost in the fair order, now known (its tokens: see
-- chatbot.line.admission.cost): its asker's next turn moves by that less what was charged
-- when it was admitted.
-- include: helpers
-- KEYS: info, stream, waiting, beat, started, lock, fair
-- ARGV: request_id, from_states, to_state, now, event, notice, lock_token, ttl, only_if_dead
-- ARGV: cancel_running, queue_channel, position_fmt, depth_fmt, tally, tally_ttl, charge
local state = redis.call('HGET', info, 'state')
if not state then return {0, ''} end
if cancel_running == '1' and state == 'running' then
  redis.call('HSET', info, 'cancel', 1)
  return {0, state}
end
if not string.find(',' .. from_states .. ',', ',' .. state .. ',', 1, true) then
  return {0, state}
end
if only_if_dead == '1' and redis.call('EXISTS', beat) == 1 then return {0, state} end
redis.call('HSET', info, 'state', to_state, 'finished_at', now)
if state == 'queued' then
  lib.settle(info, 0, tally_ttl)
elseif state == 'running' and tally ~= '' then
  lib.settle(info, tonumber(tally), tally_ttl)
end
if state == 'running' and charge ~= '' then
  local asker, cost = unpack(redis.call('HMGET', info, 'asker', 'cost'))
  if asker and redis.call('EXISTS', fair) == 1 then
    redis.call('HINCRBY', fair, 'a:' .. asker, tonumber(charge) - tonumber(cost or '0'))
  end
end
redis.call('EXPIRE', info, ttl)
local left = redis.call('ZREM', waiting, request_id)
if left == 1 then redis.call('DEL', KEY.job .. request_id) end
redis.call('SREM', started, request_id)
redis.call('DEL', beat)
lib.append(info, stream, request_id, event, ttl, true)
redis.call('PUBLISH', redis.call('HGET', info, 'channel') or request_id, notice)
if lock_token ~= '' and redis.call('GET', lock) == lock_token then redis.call('DEL', lock) end
if left == 1 then lib.announce(waiting, queue_channel, position_fmt, depth_fmt) end
return {1, state, left, redis.call('ZCARD', waiting)}

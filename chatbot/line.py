"""A request's life, in one place: queued -> running -> done | failed | cancelled | lost |
expired. Only this module moves a request between states, and each move is one Redis script
that checks the state it leaves, so it happens once: a redelivered task, a second watchdog or
a late worker finds the request already moved and does nothing. The same script appends the
request's relay event and its SSE notice, so a client hears of every ending exactly once.

Keys: waiting:<queue> zset of request ids in the order they will run (see FAIR_LUA) ·
fair:<queue> hash of that order's clock and each asker's next turn · started:<queue> set of
the ids running (one per worker) · beat:<id> alive while the worker running the request beats ·
req:<id> hash of what the request is (state, queue, session, model, lease, cancel flag, whether
it is quiet and its last ring (see EVENT_LUA), and for a resumable request its grace and,
while its client is away, until when it waits) · job:<id> what a worker runs, until one takes
it · lease:<id> alive while the web process that admitted the request lives ·
thread:<session>:<model> the lock a turn holds on its thread.
"""
import functools
import json
import logging
import os
import threading
import time
import uuid

import redis
from flask import current_app
from flask_sse import Message

from chatbot.relay import BELL_LENGTH, BELL_TTL, LEASE, LEASE_TTL, stream_key
from chatbot.store import save_lost_reply
from chatbot.upstream import REPLY_FIELDS, empty_reply, fold

log = logging.getLogger(__name__)


class QueueFull(Exception):
    pass


WAITING, STARTED, BEAT = "chatbot:waiting:{}", "chatbot:started:{}", "chatbot:beat:{}"
FAIR = "chatbot:fair:{}"
INFO, THREAD, JOB = "chatbot:req:{}", "chatbot:thread:{}:{}", "chatbot:job:{}"
LISTENING = "chatbot:listening"  # the scripts spell it out too
NO_LOCK = ("chatbot:nolock", "")  # (key, token) of a script's lock argument when none is held
QUEUE_CHANNEL = "queue"
INFO_TTL = 3600
HEARTBEAT_TTL = 5  # seconds a running request survives without a heartbeat from its worker
BEAT_EVERY = 0.25  # the heartbeat also carries the cancel check: a cancel stops within this
THREAD_LOCK_TTL = 30
ROUND = 2520  # a request's cost in the fair order at weight 1: divisible by weights 1 to 10
SEQ_SPAN = 2 ** 22  # arrival numbers within one turn of the fair order (the score's low part)

# Tell every waiting request that an SSE client listens to (LISTENING: request id -> how many
# listen) its (new) position, and the queue channel the depth. Only listeners, found without
# walking the line: ten thousand clients hanging up must not cost ten thousand squared.
# Shared by the scripts below that change the line, so a change and its announcement are one
# round trip.
ANNOUNCE_LUA = """
local function announce(waiting_key, queue_channel, position_fmt, depth_fmt)
  for _, id in ipairs(redis.call('HKEYS', 'chatbot:listening')) do
    local rank = redis.call('ZRANK', waiting_key, id)
    if rank then
      local channel = redis.call('HGET', 'chatbot:req:' .. id, 'channel') or id
      redis.call('PUBLISH', channel, string.format(position_fmt, rank + 1))
    end
  end
  redis.call('PUBLISH', queue_channel, string.format(depth_fmt, redis.call('ZCARD', waiting_key)))
end
"""
ANNOUNCE_SCRIPT = ANNOUNCE_LUA + "announce(KEYS[1], ARGV[1], ARGV[2], ARGV[3])"
# Append a relay event and ring the doorbell of the web process waiting for it (chatbot.relay):
# the ring carries the event, its id and the id of the ring before it (field `rung`), so the
# hub hands it over without reading the stream unless it sees a gap. A `quiet` request (its
# client waits for the whole reply only) rings for its final event alone.
EVENT_LUA = """
local function append(info_key, stream, request_id, event, ttl, final)
  local id = redis.call('XADD', stream, '*', 'e', event)
  redis.call('EXPIRE', stream, ttl)
  local lease, quiet, rung = unpack(redis.call('HMGET', info_key, 'lease', 'quiet', 'rung'))
  if lease and (final or not quiet) then
    local bell = 'chatbot:bell:' .. lease
    redis.call('XADD', bell, 'MAXLEN', '~', %d, '*', 'r', request_id, 'i', id,
               'p', rung or '0-0', 'e', event)
    redis.call('EXPIRE', bell, %d)
    redis.call('HSET', info_key, 'rung', id)
  end
end
""" % (BELL_LENGTH, BELL_TTL)
# A streamed chunk: appended, rung, and published to the request's SSE channel.
EMIT_SCRIPT = EVENT_LUA + """
append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], false)
redis.call('PUBLISH', ARGV[4], ARGV[5])
"""
# The line's order: start-time fair queuing. Each asker (a key, else a session) has its next
# turn in the fair hash; a request starts at the later of that turn and the clock (the turn
# of the request last taken), and moves the asker's turn on by its cost (ROUND / weight). So
# an asker with one request waits behind at most one request of each other asker, however
# many they queued, while requests of equal turn keep their arrival order (the sequence
# number in the score's low bits). With cost 0 every request has turn 0: first come, first
# served. The hash is reset when the line is empty, which keeps the numbers small.
FAIR_LUA = """
local function fair_score(waiting_key, fair_key, asker, cost, was_empty)
  if was_empty then redis.call('DEL', fair_key) end
  local seq = redis.call('HINCRBY', fair_key, '#seq', 1) %% %d
  local clock = tonumber(redis.call('HGET', fair_key, '#clock') or '0')
  local turn = math.max(clock, tonumber(redis.call('HGET', fair_key, 'a:' .. asker) or '0'))
  redis.call('HSET', fair_key, 'a:' .. asker, turn + cost)
  return turn * %d + seq
end
""" % (SEQ_SPAN, SEQ_SPAN)
# Check the bound and that the id is unused, take a place in the fair order, describe the
# request, renew the web process's lease, push its Celery task (KEYS[7], ARGV[14]) and tell
# SSE listeners (everyone's place, if it went in ahead of others), in one atomic round trip.
ADMIT_SCRIPT = ANNOUNCE_LUA + FAIR_LUA + """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local waiting = redis.call('ZCARD', KEYS[1])
if waiting >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], fair_score(KEYS[1], KEYS[5], ARGV[11], tonumber(ARGV[12]), waiting == 0), ARGV[3])
redis.call('HSET', KEYS[2], unpack(cjson.decode(ARGV[4])))
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[6], ARGV[13], 'EX', ARGV[5])
redis.call('SET', KEYS[4], 1, 'EX', ARGV[9])
if ARGV[14] ~= '' then redis.call('LPUSH', KEYS[7], ARGV[14]) end
local position = redis.call('ZRANK', KEYS[1], ARGV[3]) + 1
redis.call('PUBLISH', ARGV[10], string.format(ARGV[6], position))
if position <= waiting then
  announce(KEYS[1], ARGV[7], ARGV[6], ARGV[8])
else
  redis.call('PUBLISH', ARGV[7], string.format(ARGV[8], waiting + 1))
end
return position
"""
# Move a request from one of the states in ARGV[2] to ARGV[3], append its event and notice;
# announce the line if it left it, and release the thread lock KEYS[6] if it holds ARGV[7].
# ARGV[9] = '1': only if its heartbeat has stopped (a live worker is not declared lost).
# ARGV[10] = '1': a running request is flagged for cancel instead (its worker ends it).
# ARGV[14] (when not ''): add that much to counter KEYS[7], kept ARGV[15] s (tokens spent).
END_SCRIPT = ANNOUNCE_LUA + EVENT_LUA + """
if ARGV[14] ~= '' then
  redis.call('INCRBY', KEYS[7], ARGV[14])
  redis.call('EXPIRE', KEYS[7], ARGV[15])
end
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, ''} end
if ARGV[10] == '1' and state == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', 1)
  return {0, state}
end
if not string.find(',' .. ARGV[2] .. ',', ',' .. state .. ',', 1, true) then return {0, state} end
if ARGV[9] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then return {0, state} end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'finished_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[8])
local left = redis.call('ZREM', KEYS[3], ARGV[1])
if left == 1 then redis.call('DEL', 'chatbot:job:' .. ARGV[1]) end
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('DEL', KEYS[4])
append(KEYS[1], KEYS[2], ARGV[1], ARGV[5], ARGV[8], true)
redis.call('PUBLISH', redis.call('HGET', KEYS[1], 'channel') or ARGV[1], ARGV[6])
if ARGV[7] ~= '' and redis.call('GET', KEYS[6]) == ARGV[7] then redis.call('DEL', KEYS[6]) end
if left == 1 then announce(KEYS[3], ARGV[11], ARGV[12], ARGV[13]) end
return {1, state, left, redis.call('ZCARD', KEYS[3])}
"""
# Whether a request's client has gone for good. A resumable request (field `resumable`: its
# grace in seconds) whose client left, or whose web process died, waits that long for the
# client to come back (`detached_until`) before it counts as gone.
GONE_LUA = """
local function client_gone(info_key, now)
  local lease, detached, grace = unpack(redis.call('HMGET', info_key, 'lease', 'detached_until',
                                                   'resumable'))
  if detached then return now > tonumber(detached) end
  if lease and redis.call('EXISTS', 'chatbot:lease:' .. lease) == 0 then
    if tonumber(grace or '0') > 0 then
      redis.call('HSET', info_key, 'detached_until', now + tonumber(grace))
      return false
    end
    return true
  end
  return false
end
"""
# A worker takes the head of the line: the first request there whose client is still there
# and that has not waited too long (the others end here, their clients told); it tries the
# request's thread lock (token ARGV[14]), moves the fair order's clock to its turn and
# announces the line. ARGV[16] = '1': it also takes one task message off the broker's list
# KEYS[4] (a worker running a second request in one task consumes that request's task, see
# chatbot.tasks). ARGV[1]: the time, or 'now' for Redis's own. Returns {'run', id, waited, 1
# if it holds the lock, job, lock key}, or {'empty'}.
CLAIM_SCRIPT = ANNOUNCE_LUA + EVENT_LUA + GONE_LUA + """
local now, stamp = tonumber(ARGV[1]), ARGV[1]
if not now then  -- 'now': Redis's clock (a claim that waited for a message runs later than sent)
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
  stamp = string.format('%%.6f', now)
end
local result = {'empty'}
while true do
  local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if not head[1] then break end
  local id = head[1]
  local info = 'chatbot:req:' .. id
  redis.call('ZREM', KEYS[1], id)
  redis.call('HSET', KEYS[3], '#clock', math.floor(tonumber(head[2]) / %d))
  local job_key = 'chatbot:job:' .. id
  local job = redis.call('GET', job_key)
  redis.call('DEL', job_key)
  if redis.call('HGET', info, 'state') == 'queued' then
    local queued_at = tonumber(redis.call('HGET', info, 'queued_at')) or now
    local waited = string.format('%%.6f', math.max(0, now - queued_at))
    local verdict, event, notice = 'run', string.format(ARGV[4], waited), ARGV[5]
    if client_gone(info, now) then
      verdict, event, notice = 'cancelled', ARGV[6], ARGV[7]
    elseif now - queued_at > tonumber(ARGV[3]) then
      verdict, event, notice = 'expired', ARGV[8], ARGV[9]
    end
    if verdict == 'run' then
      redis.call('SET', 'chatbot:beat:' .. id, 1, 'EX', ARGV[2])
      redis.call('HSET', info, 'state', 'running', 'started_at', stamp)
      redis.call('SADD', KEYS[2], id)
    else
      redis.call('HSET', info, 'state', verdict, 'finished_at', stamp)
    end
    append(info, 'chatbot:relay:' .. id, id, event, ARGV[10], verdict ~= 'run')
    redis.call('PUBLISH', redis.call('HGET', info, 'channel') or id, notice)
    if verdict == 'run' then
      local session, model = unpack(redis.call('HMGET', info, 'session_id', 'model'))
      local lock, locked = 'chatbot:thread:' .. tostring(session) .. ':' .. tostring(model), 0
      if redis.call('SET', lock, ARGV[14], 'NX', 'PX', ARGV[15]) then locked = 1 end
      result = {'run', id, waited, locked, job or '', lock}
      if ARGV[16] == '1' then redis.call('RPOP', KEYS[4]) end
      break
    end
  end
end
announce(KEYS[1], ARGV[11], ARGV[12], ARGV[13])
return result
""" % SEQ_SPAN
# The worker's heartbeat, which also says whether to stop: 0 go on, 1 cancelled, 2 the
# client is gone (its web process died, or it left a resumable request and did not come
# back in time), 3 the request was ended elsewhere (declared lost).
BEAT_SCRIPT = GONE_LUA + """
local state, cancel = unpack(redis.call('HMGET', KEYS[1], 'state', 'cancel'))
if state ~= 'running' then return 3 end
if cancel then return 1 end
if client_gone(KEYS[1], tonumber(ARGV[7])) then return 2 end
redis.call('SET', KEYS[2], 1, 'EX', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '' and redis.call('GET', ARGV[4]) == ARGV[6] then
  redis.call('PEXPIRE', ARGV[4], ARGV[5])
end
return 0
"""
# A resumable request's client left (from the web process holding its lease): it waits
# ARGV[2] s for the client to come back. A client that came back through another process
# meanwhile holds the lease, and this does nothing.
DETACH_SCRIPT = """
local state, lease = unpack(redis.call('HMGET', KEYS[1], 'state', 'lease'))
if (state ~= 'queued' and state ~= 'running') or lease ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'detached_until', ARGV[2])
return 1
"""
# The client of a request came back through the web process with lease ARGV[1]: events now
# ring there, and the request no longer waits to be given up. Returns the request's state.
RESUME_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'running' then
  redis.call('SET', 'chatbot:lease:' .. ARGV[1], 1, 'EX', ARGV[2])
  redis.call('HSET', KEYS[1], 'lease', ARGV[1])
  redis.call('HDEL', KEYS[1], 'detached_until')
end
return state
"""
STOP_REASONS = {1: "cancelled", 2: "the client is gone",
                3: "the request was ended elsewhere"}
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@functools.lru_cache(maxsize=256)
def _announce_args(queue):
    """The announce snippet's arguments after its waiting key: channel and templates."""
    return (QUEUE_CHANNEL, _sse_template("queued", {"position": 0}, "position"),
            _sse_template("depth", {"queue": queue, "waiting": 0}, "waiting"))


def sse_message(type_, data, id=None):
    return json.dumps(Message(data, type=type_, id=id).to_dict())


def _sse_template(type_, data, number_field):
    """A flask-sse message with `number_field` left as %d for a script to fill in."""
    message = sse_message(type_, {**data, number_field: 999_999_999})
    return message.replace("%", "%%").replace("999999999", "%d")


def sse_channel(owner, request_id):
    """A request's SSE channel: its id, under its owner's name while keys are on, so that
    another key subscribing to the same id hears nothing of it."""
    return request_id if owner is None else f"{owner}/{request_id}"


def error_event(status, error):
    return {"t": "error", "status": status, "error": error}


def notice(event):
    """The SSE notice that goes with a relay event: (type, data[, id]). A chunk's id is its
    number, which a client that reconnects sends back as Last-Event-ID."""
    kind = event["t"]
    if kind == "chunk":
        return "token", event["raw"], event.get("n")
    if kind == "done":
        return "done", event["d"]
    if kind == "error":
        return "error", {"error": event["error"], "status": event["status"]}
    return kind, {k: v for k, v in event.items() if k != "t"}


CANCELLED = error_event(499, "request cancelled")
CLIENT_GONE = error_event(499, "client disconnected")
LOST = error_event(500, "the worker running this request died")
VANISHED = error_event(503, "the request was lost: the queue's store restarted; please retry")
UNAVAILABLE = error_event(503, "the queue's store does not answer; please retry")
ENDED = error_event(500, "the request ended, but its reply was lost on the way")


class Line:
    def __init__(self, client, max_queue, queue_timeout, relay_ttl, redis_wait=0.0):
        self.redis = client
        self.max_queue, self.queue_timeout, self.relay_ttl = max_queue, queue_timeout, relay_ttl
        # A waiting client outlasts a Redis that does not answer for this long (a restart of a
        # Redis that keeps the line); `away` is since when this process has not reached it.
        self.redis_wait, self.away = redis_wait, None
        self._admit = client.register_script(ADMIT_SCRIPT)
        self._end = client.register_script(END_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._beat = client.register_script(BEAT_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._announce = client.register_script(ANNOUNCE_SCRIPT)
        self._emit = client.register_script(EMIT_SCRIPT)
        self._detach = client.register_script(DETACH_SCRIPT)
        self._resume = client.register_script(RESUME_SCRIPT)
        # The claim's events (and their SSE notices), the same for every claim.
        expired = error_event(503, f"the request waited over {queue_timeout:g} s in line "
                                   "(QUEUE_TIMEOUT_SECONDS); please retry")
        self._claim_events = ('{"t": "started", "waited": %s}', sse_message("started", {}),
                              json.dumps(CLIENT_GONE), sse_message(*notice(CLIENT_GONE)),
                              json.dumps(expired), sse_message(*notice(expired)))

    # --- the web side -------------------------------------------------------------------

    def admit(self, request_id, queue, info, lease, job=None, asker="", weight=0, task=None):
        """Take a place in line and return it. Raises QueueFull at MAX_QUEUE waiting; returns
        None when the id has a record already (the caller picks a fresh one). `info` names
        the request's SSE `channel` (see sse_channel) and `owner`, with model and session;
        `job` is what a worker runs (chatbot.tasks); `task` (list key, message) the broker
        message that has a worker run it, pushed only if the request is admitted. Requests
        take turns between askers by `weight` (0: in order of arrival, see FAIR_LUA)."""
        now = time.time()
        fields = {**info, "queue": queue, "state": "queued", "queued_at": now, "lease": lease}
        _, queued, depth = _announce_args(queue)
        position = self._admit(
            keys=[WAITING.format(queue), INFO.format(request_id), stream_key(request_id),
                  LEASE.format(lease), FAIR.format(queue), JOB.format(request_id),
                  task[0] if task else "chatbot:notask"],
            args=[self.max_queue, now, request_id,
                  json.dumps([str(x) for kv in fields.items() for x in kv]), INFO_TTL,
                  queued, QUEUE_CHANNEL, depth, LEASE_TTL,
                  info.get("channel", request_id), asker, ROUND // weight if weight else 0,
                  json.dumps(job or {}), task[1] if task else ""])
        if position == 0:
            raise QueueFull()
        return None if position < 0 else position

    def cancel(self, request_id, event=CANCELLED):
        """A queued request leaves the line now, its client told; a running one is flagged
        and its worker stops within BEAT_EVERY. Returns the state it was in (None: unknown)."""
        info = self.info(request_id)
        if not info:
            return None
        self._move(request_id, info["queue"], ("queued",), "cancelled", event, cancel_running=True)
        return info["state"]

    def verdict(self, request_id, queue):
        """For a waiting client: an error event if its request can no longer answer (its record
        vanished, it waited too long, its worker died, Redis has not answered for
        `redis_wait` s) or has ended without the client hearing (the relay then reads the
        final event from its stream), else None."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hmget(INFO.format(request_id), "state", "queued_at")
            pipe.exists(BEAT.format(request_id))
            (state, queued_at), beating = pipe.execute()
        except redis.RedisError:
            self.away = self.away or time.monotonic()
            return UNAVAILABLE if time.monotonic() - self.away >= self.redis_wait else None
        self.away = None
        if state is None:
            return VANISHED
        state = state.decode()
        if state == "queued" and time.time() - float(queued_at) > self.queue_timeout:
            return self.expire(request_id, queue)
        if state == "running" and not beating:
            return self.lose(request_id, queue)
        if state not in ("queued", "running"):
            return ENDED
        return None

    def expire(self, request_id, queue):
        event = error_event(503, f"the request waited {self.queue_timeout:g} s in line without "
                                 "starting (QUEUE_TIMEOUT_SECONDS); please retry")
        self._move(request_id, queue, ("queued",), "expired", event)
        return event

    def lose(self, request_id, queue):
        """The worker running the request died: it ends as lost, and the reply it had streamed
        so far is stored, marked lost. None if it had ended otherwise meanwhile (its own final
        event is on its way)."""
        if not self._move(request_id, queue, ("running",), "lost", LOST, only_if_dead=True)[0]:
            return None
        log.warning("request %s lost: its worker stopped beating", request_id)
        info = self.info(request_id)
        try:
            save_lost_reply(info["session_id"], info["model"], request_id,
                            self.partial_reply(request_id))
        except Exception:  # the client still hears of the loss
            log.exception("could not store the lost reply of %s", request_id)
        return LOST

    def partial_reply(self, request_id):
        reply = empty_reply()
        for _, fields in self.redis.xrange(stream_key(request_id)):
            event = json.loads(fields[b"e"])
            if event["t"] == "chunk":
                fold(reply, json.loads(event["raw"]))
        return reply

    def sweep(self, queue):
        """Clear what no client will: waiting entries with no record or waiting too long, and
        a running request whose worker died. Returns how many were cleared."""
        cleared = 0
        for rid in self.redis.zrange(WAITING.format(queue), 0, -1):
            verdict = self.verdict(rid.decode(), queue)
            if verdict is VANISHED or verdict is ENDED:  # no record, or one that has moved on
                cleared += self.redis.zrem(WAITING.format(queue), rid)
            elif verdict:
                cleared += 1
            elif not self._may_come_back(rid.decode()):
                # The web process that admitted it died: nobody waits for the answer.
                cleared += self._move(rid.decode(), queue, ("queued",), "cancelled",
                                      CLIENT_GONE)[0]
        for rid in self.redis.smembers(STARTED.format(queue)):
            verdict = self.verdict(rid.decode(), queue)
            if verdict is VANISHED or verdict is ENDED:
                self.redis.srem(STARTED.format(queue), rid)
            cleared += verdict is LOST
        if cleared:
            self.announce(queue)
        return cleared

    def _may_come_back(self, request_id):
        """Its web process lives, or its client may still resume it (the claim decides)."""
        info = self.info(request_id)
        return bool(info.get("resumable")) or bool(self.redis.exists(LEASE.format(info.get("lease"))))

    # --- the worker side ----------------------------------------------------------------

    def claim_next(self, queue, task_list=None, also=None, wait=None):
        """Take the head of the line to run it, with its thread's lock when that is free, and
        one task message off the broker's `task_list` if given. Returns None when nobody
        waits, else (request id, seconds waited, the job, the lock if taken). `also.queue(pipe)`
        queues reads that go in the same round trip, and `also.take(results)` gets their
        results (what the request will need: the calibrations, say).

        `wait` (list, seconds): first wait that long for a message on that list, taking it,
        in the same round trip (Redis runs the claim once the BRPOP returns, so a worker
        woken by a message wakes once, claim in hand). Then returns (claimed, the message or
        None)."""
        token = str(uuid.uuid4())
        keys = [WAITING.format(queue), STARTED.format(queue), FAIR.format(queue),
                task_list or "chatbot:notasks"]
        args = [time.time(), HEARTBEAT_TTL, self.queue_timeout, *self._claim_events,
                self.relay_ttl, *_announce_args(queue), token, THREAD_LOCK_TTL * 1000,
                "1" if task_list else "0"]
        if wait is not None:
            # the claim's clock is the moment the message came, not when the wait began
            args[0] = "now"
        first = (lambda pipe: pipe.brpop([wait[0]], timeout=wait[1])) if wait else None
        (out,), read = self._one_trip([(self._claim, keys, args)],
                                      also.queue if also else None, first=first)
        for result in read:
            if isinstance(result, Exception):
                raise result
        message, read = (read[0], read[1:]) if wait else (None, read)
        if also:
            also.take(read)
        claimed = None
        if out[0] == b"run":
            _, request_id, waited, locked, job, lock_key = out
            claimed = (request_id.decode(), float(waited), json.loads(job) if job else None,
                       (lock_key.decode(), token) if locked else None)
        if wait is None:
            return claimed
        return claimed, (message[1] if message else None)

    def beat(self, request_id, queue, lock=None):
        """Renew the heartbeat (and the thread lock); returns 0 to go on, else why to stop."""
        key, token = lock or ("", "")
        return self._beat(keys=[INFO.format(request_id), BEAT.format(request_id)],
                          args=[request_id, HEARTBEAT_TTL, INFO_TTL, key,
                                THREAD_LOCK_TTL * 1000, token, time.time()])

    def detach(self, request_id, lease, grace):
        """A resumable request's client left: the request goes on for `grace` seconds, and is
        given up (the worker stops it; its partial reply is stored as cancelled) unless the
        client comes back. False if it has ended, or another process holds it now."""
        return bool(self._detach(keys=[INFO.format(request_id)],
                                 args=[lease, time.time() + grace]))

    def resume(self, request_id, lease):
        """The client came back through the process with `lease`. Returns the state, None if
        the request is unknown."""
        state = self._resume(keys=[INFO.format(request_id)], args=[lease, LEASE_TTL])
        return state.decode() if state else None

    def emit(self, request_id, channel, events):
        """Streamed chunks, to the waiting client and the SSE listeners of `channel`."""
        self._one_trip([self._emit_call(request_id, channel, event) for event in events])

    def _emit_call(self, request_id, channel, event):
        """(script, keys, args) that emit one chunk."""
        return (self._emit, [INFO.format(request_id), stream_key(request_id)],
                [request_id, json.dumps(event), self.relay_ttl, channel,
                 sse_message(*notice(event))])

    def finish(self, request_id, queue, reply, lock=None, tally=None, then=None, chunks=(),
               channel=None):
        """End a running request with its reply's outcome, releasing its thread `lock`, and
        add to counter `tally` (key, amount, seconds kept) in the same round trip, after the
        `chunks` not yet emitted (to `channel`) and before `then`'s writes (a metrics batch).
        Returns how many requests wait in the line then, or None if it had already ended."""
        state, event = outcome(reply)
        before = [self._emit_call(request_id, channel, chunk) for chunk in chunks]
        ended = self._move(request_id, queue, ("running",), state, event, lock=lock, tally=tally,
                           then=then, before=before)
        return ended[3] if ended[0] else None

    def lock_thread(self, session_id, model, stop, wait=600.0):
        """Hold the thread for one turn at a time, across workers and hosts. Returns the lock,
        or None if `stop()` said to give up (or after `wait` s)."""
        key, token = THREAD.format(session_id, model), str(uuid.uuid4())
        deadline = time.monotonic() + wait
        while not self.redis.set(key, token, nx=True, px=THREAD_LOCK_TTL * 1000):
            if stop() or time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return key, token

    def unlock_thread(self, lock):
        key, token = lock
        self._release(keys=[key], args=[token])

    # --- shared -------------------------------------------------------------------------

    def _move(self, request_id, queue, from_states, to_state, event, only_if_dead=False,
              cancel_running=False, lock=None, tally=None, then=None, before=()):
        key, token = lock or NO_LOCK
        counter, amount, kept = tally or ("chatbot:notally", "", 0)
        keys = [INFO.format(request_id), stream_key(request_id), WAITING.format(queue),
                BEAT.format(request_id), STARTED.format(queue), key, counter]
        args = [request_id, ",".join(from_states), to_state, time.time(), json.dumps(event),
                sse_message(*notice(event)), token, self.relay_ttl,
                "1" if only_if_dead else "0", "1" if cancel_running else "0",
                *_announce_args(queue), amount, kept]
        # The events `before`, the ending (its client hears at once), then `then`'s writes
        # (whose failures are theirs: a metric never fails a request).
        ran, _ = self._one_trip([*before, (self._end, keys, args)],
                                then.into if then is not None else None)
        return ran[-1]

    def _one_trip(self, calls, then=None, first=None):
        """Run scripts [(script, keys, args)] in one round trip, by their sha (loading them
        first would cost a trip of its own), after what `first(pipe)` queues and followed by
        what `then(pipe)` queues. Returns (the scripts' results, raising any error among
        them; first's and then's results, as they came). Redis forgot the scripts (it
        restarted, so none of them ran): they run again, loaded, one by one."""
        pipe = self.redis.pipeline(transaction=False)
        if first is not None:
            first(pipe)
        before = len(pipe)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        if then is not None:
            then(pipe)
        results = pipe.execute(raise_on_error=False)
        ran = results[before:before + len(calls)]
        rest = results[:before] + results[before + len(calls):]
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in ran):
            ran = [script(keys=keys, args=args) for script, keys, args in calls]
        for result in ran:
            if isinstance(result, Exception):
                raise result
        return ran, rest

    def listen(self, request_id, delta):
        """An SSE client starts (+1) or stops (-1) listening to a request's notices."""
        if self.redis.hincrby(LISTENING, request_id, delta) <= 0:
            self.redis.hdel(LISTENING, request_id)

    def counts(self, queue):
        """(requests waiting, requests running: one per worker), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(WAITING.format(queue))
        pipe.scard(STARTED.format(queue))
        waiting, running = pipe.execute()
        return waiting, running

    def load(self, queue):
        """Requests waiting plus the one running: what a new request would wait behind."""
        return sum(self.counts(queue))

    def announce(self, queue):
        """Every waiting request that listens hears its position, the queue channel the depth."""
        self._announce(keys=[WAITING.format(queue)], args=_announce_args(queue))

    def position(self, request_id, queue):
        rank = self.redis.zrank(WAITING.format(queue), request_id)
        return None if rank is None else rank + 1

    def info(self, request_id):
        raw = self.redis.hgetall(INFO.format(request_id))
        return {k.decode(): _number(v.decode()) for k, v in raw.items()}

    def snapshot(self, queue):
        """Depth, the running request (the longest running, if several workers share the
        queue) and the waiting ones, for GET /api/queue."""
        now = time.time()
        running = sorted(self.redis.smembers(STARTED.format(queue)))
        waiting = self.redis.zrange(WAITING.format(queue), 0, -1)
        ids = running + waiting
        pipe = self.redis.pipeline(transaction=False)
        for rid in ids:
            pipe.hgetall(INFO.format(rid.decode()))
        infos = [{k.decode(): _number(v.decode()) for k, v in raw.items()} for raw in pipe.execute()]
        describe = lambda rid, info: {  # noqa: E731
            "request_id": rid.decode(), "model": info.get("model"),
            "session_id": info.get("session_id"), "owner": info.get("owner") or None}
        out = {"queue": queue, "depth": len(waiting), "running": None, "waiting": []}
        started = sorted(((info.get("started_at", now), rid, info)
                          for rid, info in zip(running, infos[:len(running)])),
                         key=lambda entry: entry[0])
        if started:
            started_at, rid, info = started[0]
            out["running"] = {**describe(rid, info), "running_for": round(now - started_at, 3)}
        for position, (rid, info) in enumerate(zip(waiting, infos[len(running):]), 1):
            out["waiting"].append({**describe(rid, info), "position": position,
                                   "age": round(now - info.get("queued_at", now), 3)})
        return out

    def set_phase(self, request_id, channel, phase, event, data=None):
        """A running request's step its client may wait on (summarizing its history, say):
        `phase` in GET /api/queue/<id> (None clears it), and `event` to SSE listeners."""
        pipe = self.redis.pipeline(transaction=False)
        if phase:
            pipe.hset(INFO.format(request_id), "phase", phase)
        else:
            pipe.hdel(INFO.format(request_id), "phase")
        pipe.publish(channel, sse_message(event, data or {}))
        pipe.execute()


def outcome(reply):
    """(state, final event) of a flow's reply."""
    if reply.get("error"):
        return "failed", error_event(**reply["error"])
    if reply.get("status") == "cancelled":
        return "cancelled", CANCELLED
    whole = {k: reply.get(k) for k in REPLY_FIELDS}
    return "done", {"t": "done", "d": reply["final"], "reply": whole, "marks": reply.get("marks"),
                    "waited": reply.get("waited", 0.0)}


class Heartbeat:
    """Keeps a running request (and its thread lock) alive while this process lives, and
    notices a cancel: if the worker dies, the mark expires and the waiting client hears.
    One thread per process beats for every running request's Heartbeat (a thread started per
    request cost more than a short request's whole run): start() hands it this one."""

    _beater, _beater_pid, _guard = None, None, threading.Lock()
    _running = set()

    def __init__(self, line, request_id, queue):
        self.line, self.request_id, self.queue = line, request_id, queue
        self.lock, self.why = None, 0
        self.stopped = threading.Event()

    def start(self):
        cls = type(self)
        with cls._guard:
            cls._running.add(self)
            if cls._beater_pid != os.getpid():  # none yet in this process (or forked since)
                cls._beater = threading.Thread(target=cls._beat_all, daemon=True,
                                               name="heartbeat")
                cls._beater_pid = os.getpid()
                cls._beater.start()

    @classmethod
    def _beat_all(cls):
        while True:
            time.sleep(BEAT_EVERY)
            with cls._guard:
                cls._running = {hb for hb in cls._running if not hb.stopped.is_set()}
                running = list(cls._running)
            for heartbeat in running:
                heartbeat.beat()

    def beat(self):
        if self.stopped.is_set():  # its request ended since the beater looked
            return
        try:
            why = self.line.beat(self.request_id, self.queue, self.lock)
        except redis.RedisError:
            log.warning("heartbeat of %s: redis does not answer", self.request_id)
            return
        if why and not self.why:
            log.info("%s told to stop: %s", self.request_id, STOP_REASONS[why])
            self.why = why

    def stop_asked(self):
        return bool(self.why)


def _number(text):
    try:
        return float(text)
    except ValueError:
        return text


def init_app(app):
    app.extensions["line"] = Line(app.extensions["redis"], app.config["MAX_QUEUE"], app.config["QUEUE_TIMEOUT_SECONDS"],
                                  app.config["RELAY_TTL_SECONDS"], app.config["REDIS_WAIT_SECONDS"])


def get():
    return current_app.extensions["line"]

"""The waiting line in Redis: bound, positions, who runs, cancel flags, and the SSE notices
that go with each change (flask-sse's message format, published in the same round trip).

Keys: waiting:<queue> zset of request ids by enqueue time · running:<queue> the running
request's id, kept alive by the worker's heartbeat · req:<id> hash of what the request is ·
cancel:<id> flag.
"""
import json
import time

import redis
from flask import current_app
from flask_sse import Message


class QueueFull(Exception):
    pass


WAITING, RUNNING = "chatbot:waiting:{}", "chatbot:running:{}"
INFO, CANCEL = "chatbot:req:{}", "chatbot:cancel:{}"
QUEUE_CHANNEL = "queue"
INFO_TTL = 3600
HEARTBEAT_TTL = 5  # seconds a running request survives without a heartbeat from its worker
# Check the bound, join the line, describe the request and tell SSE listeners, in one round
# trip and atomically, so that concurrent requests cannot overshoot the bound.
ADMIT = """
local waiting = redis.call('ZCARD', KEYS[1])
if waiting >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], unpack(cjson.decode(ARGV[4])))
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[3], string.format(ARGV[6], waiting + 1))
redis.call('PUBLISH', ARGV[7], string.format(ARGV[8], waiting + 1))
return waiting + 1
"""

def _sse_template(channel, type_, data, number_field):
    """A flask-sse message with `number_field` left as %d for the script to fill in."""
    message = json.dumps(Message({**data, number_field: 999_999_999}, type=type_).to_dict())
    return message.replace("%", "%%").replace("999999999", "%d")


def connect(redis_url, max_connections=64):
    """A client whose threads queue for a connection rather than fail when hundreds of
    requests touch Redis at once."""
    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=max_connections,
                                                 timeout=30)
    return redis.Redis(connection_pool=pool)


def sse(pipe, channel, type_, data):
    """Queue a flask-sse notice on `pipe` (flask-sse itself opens a connection per publish)."""
    pipe.publish(channel, json.dumps(Message(data, type=type_).to_dict()))


class Queueing:
    def __init__(self, redis_url, max_queue):
        self.redis = connect(redis_url)
        self.max_queue = max_queue
        self._admit = self.redis.register_script(ADMIT)

    def admit(self, request_id, queue, info):
        """Take a place in line and return it, or raise QueueFull at MAX_QUEUE waiting."""
        now = time.time()
        fields = {**info, "queue": queue, "state": "queued", "queued_at": now}
        position = self._admit(
            keys=[WAITING.format(queue), INFO.format(request_id)],
            args=[self.max_queue, now, request_id,
                  json.dumps([str(x) for kv in fields.items() for x in kv]), INFO_TTL,
                  _sse_template(request_id, "queued", {"position": 0}, "position"),
                  QUEUE_CHANNEL,
                  _sse_template(QUEUE_CHANNEL, "depth", {"queue": queue, "waiting": 0}, "waiting")])
        if not position:
            raise QueueFull()
        return position

    def start(self, request_id, queue):
        """Leave the line and become the running request. Returns (the client already left,
        seconds waited in line, who still waits): the caller announces the new positions."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(WAITING.format(queue), request_id)
        pipe.exists(CANCEL.format(request_id))
        pipe.hget(INFO.format(request_id), "queued_at")
        pipe.set(RUNNING.format(queue), request_id, ex=HEARTBEAT_TTL)
        pipe.hset(INFO.format(request_id), mapping={"state": "running", "started_at": now})
        sse(pipe, request_id, "started", {})
        pipe.zrange(WAITING.format(queue), 0, -1)
        _, cancelled, queued_at, _, _, _, waiting = pipe.execute()
        return bool(cancelled), max(0.0, now - float(queued_at or now)), waiting

    def heartbeat(self, request_id, queue):
        self.redis.set(RUNNING.format(queue), request_id, ex=HEARTBEAT_TTL)

    def finish(self, request_id, queue, state):
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(INFO.format(request_id), mapping={"state": state, "finished_at": time.time()})
        pipe.execute()
        # Only our own entry: a later request may already run.
        if self.redis.get(RUNNING.format(queue)) == request_id.encode():
            self.redis.delete(RUNNING.format(queue))
        self.announce(queue)

    def counts(self, queue):
        """(requests waiting, requests running: 0 or 1), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(WAITING.format(queue))
        pipe.exists(RUNNING.format(queue))
        waiting, running = pipe.execute()
        return waiting, running

    def load(self, queue):
        """Requests waiting plus the one running: what a new request would wait behind."""
        return sum(self.counts(queue))

    def is_running(self, request_id, queue):
        return self.redis.get(RUNNING.format(queue)) == request_id.encode()

    def announce(self, queue, waiting=None, pipe=None):
        """Tell every waiting request that listens its (new) position, and the queue channel
        the depth (queued on the caller's `pipe` if given). Only listeners: a mass hang-up
        must not cost a publish per pair."""
        if waiting is None:
            waiting = self.redis.zrange(WAITING.format(queue), 0, -1)
        listening = dict(self.redis.pubsub_numsub(*waiting)) if waiting else {}
        execute, pipe = pipe is None, pipe or self.redis.pipeline(transaction=False)
        for position, request_id in enumerate(waiting, 1):
            if listening.get(request_id):
                sse(pipe, request_id.decode(), "queued", {"position": position})
        sse(pipe, QUEUE_CHANNEL, "depth", {"queue": queue, "waiting": len(waiting)})
        if execute:
            pipe.execute()

    def position(self, request_id, queue):
        rank = self.redis.zrank(WAITING.format(queue), request_id)
        return None if rank is None else rank + 1

    def info(self, request_id):
        raw = self.redis.hgetall(INFO.format(request_id))
        return {k.decode(): _number(v.decode()) for k, v in raw.items()}

    def cancel(self, request_id):
        """Flag the request; if it still waits, it leaves the line now."""
        info = self.info(request_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(CANCEL.format(request_id), 1, ex=INFO_TTL)
        if info.get("queue"):
            pipe.zrem(WAITING.format(info["queue"]), request_id)
        if info.get("state") == "queued":
            pipe.hset(INFO.format(request_id), "state", "cancelled")
        removed = pipe.execute()[1] if info.get("queue") else 0
        if removed:
            self.announce(info["queue"])
        return info

    def is_cancelled(self, request_id):
        return bool(self.redis.exists(CANCEL.format(request_id)))

    def cancel_probe(self, request_id, every=0.25):
        """A cheap `cancelled()` for a per-token loop: asks Redis at most every `every` s."""
        state = {"next": 0.0, "cancelled": False}

        def cancelled():
            now = time.monotonic()
            if not state["cancelled"] and now >= state["next"]:
                state["next"] = now + every
                state["cancelled"] = self.is_cancelled(request_id)
            return state["cancelled"]

        return cancelled

    def snapshot(self, queue):
        """Depth, the running request and the waiting ones, for GET /api/queue."""
        now = time.time()
        running = self.redis.get(RUNNING.format(queue))
        waiting = self.redis.zrange(WAITING.format(queue), 0, -1, withscores=True)
        ids = ([running] if running else []) + [rid for rid, _ in waiting]
        pipe = self.redis.pipeline(transaction=False)
        for rid in ids:
            pipe.hgetall(INFO.format(rid.decode()))
        infos = [{k.decode(): _number(v.decode()) for k, v in raw.items()} for raw in pipe.execute()]
        describe = lambda rid, info: {  # noqa: E731
            "request_id": rid.decode(), "model": info.get("model"),
            "session_id": info.get("session_id")}
        out = {"queue": queue, "depth": len(waiting), "running": None, "waiting": []}
        if running:
            info = infos.pop(0)
            out["running"] = {**describe(running, info),
                              "running_for": round(now - info.get("started_at", now), 3)}
        for position, ((rid, queued_at), info) in enumerate(zip(waiting, infos), 1):
            out["waiting"].append({**describe(rid, info), "position": position,
                                   "age": round(now - queued_at, 3)})
        return out


def _number(text):
    try:
        return float(text)
    except ValueError:
        return text


def init_app(app):
    app.extensions["queueing"] = Queueing(app.config["REDIS_URL"], app.config["MAX_QUEUE"])


def get():
    return current_app.extensions["queueing"]

"""The waiting line in Redis: bound, positions and cancel flags."""
import time

import redis
from flask import current_app


class QueueFull(Exception):
    pass


WAITING = "chatbot:waiting:{queue}"
# Check and join the line atomically, so that concurrent requests cannot overshoot the bound.
ADMIT = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return 1
"""
CANCEL = "chatbot:cancel:{request_id}"


class Queueing:
    def __init__(self, redis_url, max_queue):
        self.redis = redis.Redis.from_url(redis_url)
        self.max_queue = max_queue
        self._admit = self.redis.register_script(ADMIT)

    def admit(self, request_id, queue):
        """Take a place in line, or raise QueueFull when MAX_QUEUE requests already wait."""
        if not self._admit(keys=[WAITING.format(queue=queue)],
                           args=[self.max_queue, time.time(), request_id]):
            raise QueueFull()

    def start(self, request_id, queue):
        """Leave the line; True if the client already cancelled (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(WAITING.format(queue=queue), request_id)
        pipe.exists(CANCEL.format(request_id=request_id))
        return bool(pipe.execute()[1])

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

    def position(self, request_id, queue):
        rank = self.redis.zrank(WAITING.format(queue=queue), request_id)
        return None if rank is None else rank + 1

    def cancel(self, request_id, ttl=3600):
        self.redis.set(CANCEL.format(request_id=request_id), 1, ex=ttl)

    def is_cancelled(self, request_id):
        return bool(self.redis.exists(CANCEL.format(request_id=request_id)))


def init_app(app):
    app.extensions["queueing"] = Queueing(app.config["REDIS_URL"], app.config["MAX_QUEUE"])


def get():
    return current_app.extensions["queueing"]

"""The waiting line in Redis: bound, positions and cancel flags."""
import time

import redis
from flask import current_app


class QueueFull(Exception):
    pass


WAITING = "chatbot:waiting:{queue}"
CANCEL = "chatbot:cancel:{request_id}"


class Queueing:
    def __init__(self, redis_url, max_queue):
        self.redis = redis.Redis.from_url(redis_url)
        self.max_queue = max_queue

    def admit(self, request_id, queue):
        """Take a place in line, or raise QueueFull when MAX_QUEUE requests already wait."""
        key = WAITING.format(queue=queue)
        if self.redis.zcard(key) >= self.max_queue:
            raise QueueFull()
        self.redis.zadd(key, {request_id: time.time()})

    def started(self, request_id, queue):
        self.redis.zrem(WAITING.format(queue=queue), request_id)

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

"""One Redis Stream per request: the worker appends events, the web reads them from the start.

A stream (not pub/sub) so that no event is lost when the worker is faster than the reader,
and a reader can resume from the last id it saw.
Events: {"t": "started"} · {"t": "chunk", "raw": <upstream NDJSON line>} ·
{"t": "done", "d": <final chunk>} · {"t": "error", "status": int, "error": str}.
"""
import json

import redis

FINAL = ("done", "error")


def stream_key(request_id):
    return f"chatbot:relay:{request_id}"


class Relay:
    def __init__(self, redis_url, ttl):
        # redis-py 8 defaults to a 5 s socket timeout; our blocking reads stay under it.
        self.redis = redis.Redis.from_url(redis_url)
        self.ttl = ttl

    def publish(self, request_id, event):
        key = stream_key(request_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(key, {"e": json.dumps(event)})
        if event["t"] in ("started",) + FINAL:
            pipe.expire(key, self.ttl)
        pipe.execute()

    def events(self, request_id, last_id="0-0", block_ms=1000, idle=None):
        """Yield events until a final one. `idle()` is called on each empty wait; it may raise."""
        key = stream_key(request_id)
        while True:
            reply = self.redis.xread({key: last_id}, block=block_ms, count=256)
            if not reply:
                if idle:
                    idle()
                continue
            for last_id, fields in reply[0][1]:
                event = json.loads(fields[b"e"])
                yield event
                if event["t"] in FINAL:
                    return


def init_app(app):
    app.extensions["relay"] = Relay(app.config["REDIS_URL"], app.config["RELAY_TTL_SECONDS"])

"""One Redis Stream per request: the worker appends events, the web reads them from the start.

A stream (not pub/sub) so that no event is lost when the worker is faster than the reader,
and a reader can resume from the last id it saw.
Events: {"t": "started"} · {"t": "chunk", "raw": <upstream NDJSON line>} ·
{"t": "done", "d": <final chunk>} · {"t": "error", "status": int, "error": str}.
"""
import json

import redis

from chatbot.queueing import sse

FINAL = ("done", "error")


def stream_key(request_id):
    return f"chatbot:relay:{request_id}"


class Relay:
    def __init__(self, redis_url, ttl):
        # redis-py 8 defaults to a 5 s socket timeout; our blocking reads stay under it.
        self.redis = redis.Redis.from_url(redis_url)
        self.ttl = ttl

    def publish(self, request_id, event):
        """Append the event, and tell SSE listeners of the request in the same round trip."""
        key = stream_key(request_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(key, {"e": json.dumps(event)})
        if event["t"] in ("started",) + FINAL:
            pipe.expire(key, self.ttl)
        if event["t"] == "chunk":
            sse(pipe, request_id, "token", event["raw"])
        elif event["t"] == "done":
            sse(pipe, request_id, "done", event["d"])
        elif event["t"] == "error":
            sse(pipe, request_id, "error", {"error": event["error"], "status": event["status"]})
        pipe.execute()

    def events(self, request_id, last_id="0-0", block_ms=500, check=None):
        """Yield events until a final one.

        `check()` runs after every read; when it returns an event (the client left, the worker
        died), that event ends the stream, unless a final event has landed meanwhile.
        """
        key = stream_key(request_id)
        while True:
            reply = self.redis.xread({key: last_id}, block=block_ms, count=256)
            for last_id, fields in (reply[0][1] if reply else ()):
                event = json.loads(fields[b"e"])
                yield event
                if event["t"] in FINAL:
                    return
            verdict = check() if check else None
            if verdict:
                for last_id, fields in self._tail(key, last_id):
                    event = json.loads(fields[b"e"])
                    yield event
                    if event["t"] in FINAL:
                        return
                yield verdict
                return

    def _tail(self, key, last_id):
        reply = self.redis.xread({key: last_id}, count=10_000)
        return reply[0][1] if reply else ()


def init_app(app):
    app.extensions["relay"] = Relay(app.config["REDIS_URL"], app.config["RELAY_TTL_SECONDS"])

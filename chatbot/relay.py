"""One Redis Stream per request: the line (chatbot.line) appends events, the web reads them
from the start.

A stream (not pub/sub) so that no event is lost when the worker is faster than the reader,
and a reader can resume from the last id it saw. In the web process a single hub thread
reads every stream being waited on with one XREAD, so a waiting request holds no Redis
connection of its own (hundreds of clients can wait in line).

Events: {"t": "started"} · {"t": "chunk", "raw": <upstream NDJSON line>} ·
{"t": "done", "d": <final chunk>, "reply": {...}} · {"t": "error", "status": int, "error": str}.
"""
import json
import os
import queue
import threading
import time
import uuid

import redis

from chatbot.redis_pool import connect

FINAL = ("done", "error")
HUB_BLOCK_MS = 2000  # under the pool's 5 s socket timeout
WAKE_TTL = 24 * 3600
LEASE = "chatbot:lease:{}"
LEASE_TTL = 15  # seconds a web process's requests outlive its hub's last renewal
RENEW_EVERY = 3


def stream_key(request_id):
    return f"chatbot:relay:{request_id}"


class Hub(threading.Thread):
    """Reads the streams of every waiting request of this process and hands out events. It
    also renews the process's lease: while it lives, the requests it admitted are wanted."""

    def __init__(self, client):
        super().__init__(daemon=True, name="relay-hub")
        self.redis = client
        self.lease = str(uuid.uuid4())
        self.wake_key = f"chatbot:wake:{self.lease}"
        self.waiters = {}  # stream key -> [last id, queue of events]
        self.lock = threading.Lock()

    def watch(self, request_id):
        inbox = queue.SimpleQueue()
        with self.lock:
            self.waiters[stream_key(request_id).encode()] = ["0-0", inbox]
        # Interrupt the blocked XREAD so the next one includes this stream (without it, the
        # next read within HUB_BLOCK_MS does; Redis away: the waiter's watchdog reports it).
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": 1}, maxlen=10)
            pipe.expire(self.wake_key, WAKE_TTL)
            pipe.execute()
        except redis.RedisError:
            pass
        return inbox

    def unwatch(self, request_id):
        with self.lock:
            self.waiters.pop(stream_key(request_id).encode(), None)

    def run(self):
        renewed = 0.0
        while True:
            if time.monotonic() - renewed > RENEW_EVERY:
                try:
                    self.redis.set(LEASE.format(self.lease), 1, ex=LEASE_TTL)
                    renewed = time.monotonic()
                except redis.RedisError:
                    pass
            with self.lock:
                streams = {key: last for key, (last, _) in self.waiters.items()}
            streams[self.wake_key] = "$"
            try:
                reply = self.redis.xread(streams, block=HUB_BLOCK_MS, count=256)
            except redis.RedisError:
                threading.Event().wait(0.5)  # Redis away: waiters' watchdogs report it
                continue
            with self.lock:
                for key, entries in reply or ():
                    waiter = self.waiters.get(key)
                    if waiter is None:
                        continue
                    for entry_id, fields in entries:
                        waiter[0] = entry_id
                        waiter[1].put(json.loads(fields[b"e"]))


class Relay:
    def __init__(self, client, redis_url):
        self.redis, self.redis_url = client, redis_url
        self._hub, self._hub_pid = None, None
        self._hub_lock = threading.Lock()

    def hub(self):
        """This process's hub, started on first use (after any fork of a server's workers)."""
        with self._hub_lock:
            if self._hub is None or self._hub_pid != os.getpid():
                self._hub, self._hub_pid = Hub(connect(self.redis_url)), os.getpid()
                self._hub.start()
            return self._hub

    def events(self, request_id, check=None, every=0.5):
        """Yield events until a final one.

        `check(started)` runs every `every` seconds, events or not; when it returns an event
        (the client left, the worker died), that event ends the stream, unless a final event
        has landed meanwhile.
        """
        hub = self.hub()
        inbox, started = hub.watch(request_id), False
        next_check = time.monotonic() + every
        try:
            while True:
                try:
                    event = inbox.get(timeout=max(0.0, next_check - time.monotonic()))
                except queue.Empty:
                    event = None
                if event is not None:
                    started = started or event["t"] == "started"
                    yield event
                    if event["t"] in FINAL:
                        return
                if check and time.monotonic() >= next_check:
                    next_check = time.monotonic() + every
                    verdict = check(started)
                    if verdict:
                        yield from self._tail_or(request_id, inbox, verdict)
                        return
        finally:
            hub.unwatch(request_id)

    def _tail_or(self, request_id, inbox, verdict):
        """What already arrived up to a final event, else the verdict."""
        while True:
            try:
                event = inbox.get_nowait()
            except queue.Empty:
                break
            yield event
            if event["t"] in FINAL:
                return
        try:
            newest = self.redis.xrevrange(stream_key(request_id), count=1) or ()
        except redis.RedisError:
            newest = ()
        for _, fields in newest:
            last = json.loads(fields[b"e"])
            if last["t"] in FINAL:
                yield last
                return
        yield verdict


def init_app(app):
    app.extensions["relay"] = Relay(app.extensions["redis"], app.config["REDIS_URL"])

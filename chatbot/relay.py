"""One Redis Stream per request: the line (chatbot.line) appends events, the web reads them
from the start.

A stream (not pub/sub) so that no event is lost when the worker is faster than the reader,
and a reader can resume from the last id it saw. In the web process a single hub thread does
all the reading, so a waiting request holds no Redis connection of its own: it blocks on the
process's doorbell (bell:<lease>, a stream that every writer of an event rings in the same
script, with the request id, the event, its id and the id before it). The hub hands a ring's
event over when it follows the last one its waiter has, and reads that request's stream only
when it sees a gap (rings trimmed away unread). However many clients wait, an event costs the
hub one read. A final ring lost altogether is made up for by the waiter's watchdog: the line
says the request has ended, and the final event is read from its stream (Relay._tail_or).

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
BELL = "chatbot:bell:{}"  # the scripts in chatbot.line spell it out too
BELL_LENGTH, BELL_TTL = 1000, 120  # rings kept unread at most (about), and for how long
# Checks per second a process spends on requests still waiting in line, however many: with
# thousands waiting, each is looked at less often (a running request keeps its own pace).
WAITING_CHECKS_PER_SECOND = 2000
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
        self.bell = BELL.format(self.lease)
        self.waiters = {}  # request id -> [last entry id read, queue of events]
        self.lock = threading.Lock()

    def watch(self, request_id):
        """The request's inbox. Watch before the request can produce events (before its task
        is sent), so that no ring comes too early; watching again returns the same inbox."""
        with self.lock:
            waiter = self.waiters.setdefault(request_id, [b"0-0", queue.SimpleQueue()])
        return waiter[1]

    def unwatch(self, request_id):
        with self.lock:
            self.waiters.pop(request_id, None)

    def spread(self, every, per_second):
        """Seconds between one waiter's looks at something, so that all of this process's
        waiters together look at most `per_second` times a second (never more often than
        `every`)."""
        return max(every, len(self.waiters) / per_second)

    def run(self):
        renewed, last = 0.0, b"0-0"
        while True:
            if time.monotonic() - renewed > RENEW_EVERY:
                try:
                    self.redis.set(LEASE.format(self.lease), 1, ex=LEASE_TTL)
                    renewed = time.monotonic()
                except redis.RedisError:
                    pass
            try:
                reply = self.redis.xread({self.bell: last}, block=HUB_BLOCK_MS, count=1024)
                gaps = set()
                with self.lock:
                    for _, entries in reply or ():
                        for entry_id, fields in entries:
                            last = entry_id
                            self.hand_over(fields, gaps)
                self.read(gaps)
            except redis.RedisError:
                threading.Event().wait(0.5)  # Redis away: waiters' watchdogs report it

    def hand_over(self, ring, gaps):
        """Give a ring's event to its waiter if it follows the last one the waiter has;
        otherwise (a ring trimmed away unread) note the request for a read of its stream."""
        rid = ring[b"r"].decode()
        waiter = self.waiters.get(rid)
        if waiter is None:
            return
        if rid not in gaps and waiter[0] == ring[b"p"]:
            waiter[0] = ring[b"i"]
            waiter[1].put(json.loads(ring[b"e"]))
        elif waiter[0] != ring[b"i"]:
            gaps.add(rid)

    def read(self, request_ids):
        """Hand the new events of these requests' streams to their waiters."""
        with self.lock:
            wanted = [(rid, self.waiters[rid][0]) for rid in request_ids if rid in self.waiters]
        if not wanted:
            return
        pipe = self.redis.pipeline(transaction=False)
        for rid, after in wanted:
            pipe.xrange(stream_key(rid), min=b"(" + after if after != b"0-0" else "-")
        results = pipe.execute()
        with self.lock:
            for (rid, _), entries in zip(wanted, results):
                waiter = self.waiters.get(rid)
                for entry_id, fields in entries if waiter else ():
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

        `check(started)` runs every `every` seconds once started, events or not (while
        waiting, less often when thousands wait); when it returns an event (the client left,
        the worker died), that event ends the stream, unless a final event has landed
        meanwhile.
        """
        hub = self.hub()
        inbox, started = hub.watch(request_id), False
        pace = lambda: every if started else hub.spread(every, WAITING_CHECKS_PER_SECOND)  # noqa: E731
        next_check = time.monotonic() + pace()
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
                    next_check = time.monotonic() + pace()
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

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
says the request has ended, and the rest is read from its stream (Relay._tail_or). A client
that comes back to a resumable request gets a waiter of its own, which reads the stream from
the start.

Events: see chatbot.line.events.
"""
import json
import os
import queue
import threading
import time
import uuid

import redis

from chatbot.line.events import FINAL, STARTED
from chatbot.redis_keys import BELL, LEASE, stream_key
from chatbot.redis_pool import connect

HUB_BLOCK_MS = 2000  # under the pool's 5 s socket timeout
# Checks per second a process spends on requests still waiting in line, however many: with
# thousands waiting, each is looked at less often (a running request keeps its own pace).
WAITING_CHECKS_PER_SECOND = 2000
TICK = {"t": "tick"}
LEASE_TTL = 15  # seconds a web process's requests outlive its hub's last renewal
RENEW_EVERY = 3


class Inbox:
    """The events handed to one waiter, in order, for its one reader: a list and an Event,
    a tenth of a queue's memory (2.5 KB under gevent), with thousands of clients waiting."""

    def __init__(self):
        self.items, self.ready = [], threading.Event()

    def put(self, event):
        self.items.append(event)
        self.ready.set()

    def get(self, timeout=None):
        """The next event; queue.Empty if none came within `timeout` s (or, rarely, early:
        a caller waits again)."""
        if not self.items:
            self.ready.wait(timeout)
        self.ready.clear()  # before looking: a put from now on sets it again
        if self.items:
            return self.items.pop(0)
        raise queue.Empty

    def get_nowait(self):
        return self.get(0)


class Waiter:
    """One reader of a request's events: the last stream entry id it has, and its inbox."""

    def __init__(self):
        self.last, self.inbox = b"0-0", Inbox()


class Hub(threading.Thread):
    """Reads the streams of every waiting request of this process and hands out events. It
    also renews the process's lease: while it lives, the requests it admitted are wanted."""

    def __init__(self, client):
        super().__init__(daemon=True, name="relay-hub")
        self.redis = client
        self.lease = str(uuid.uuid4())
        self.bell = BELL.format(self.lease)
        self.waiters = {}  # request id -> [Waiter]: the client that asked, and any come back
        self.lock = threading.Lock()

    def watch(self, request_id, again=False):
        """The request's waiter. Watch before the request can produce events (before its task
        is sent), so that no ring comes too early; watching again returns the same waiter,
        unless `again` (a client that came back while its old connection lingers): a new one
        that reads the request's events from the start."""
        with self.lock:
            waiters = self.waiters.setdefault(request_id, [])
            if again or not waiters:
                waiters.append(Waiter())
            return waiters[-1] if again else waiters[0]

    def unwatch(self, request_id, waiter=None):
        """Stop handing events to `waiter` (by default, the request's first)."""
        with self.lock:
            waiters = self.waiters.get(request_id)
            if not waiters:
                return
            waiter = waiter or waiters[0]
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                del self.waiters[request_id]

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
                if reply:
                    time.sleep(0)  # let the waiters handed events run before the next read
            except redis.RedisError:
                threading.Event().wait(0.5)  # Redis away: waiters' watchdogs report it

    def hand_over(self, ring, gaps):
        """Give a ring's event to each waiter of its request whose last event is the one
        before it; a waiter further behind (rings trimmed away unread, or one that came back
        and reads from the start) has the request noted for a read of its stream."""
        rid = ring[b"r"].decode()
        for waiter in self.waiters.get(rid, ()):
            if rid not in gaps and waiter.last == ring[b"p"]:
                waiter.last = ring[b"i"]
                waiter.inbox.put(json.loads(ring[b"e"]))
            elif waiter.last != ring[b"i"]:
                gaps.add(rid)

    def read(self, request_ids):
        """Hand the new events of these requests' streams to their waiters."""
        with self.lock:
            wanted = [(rid, waiter, waiter.last) for rid in request_ids
                      for waiter in self.waiters.get(rid, ())]
        if not wanted:
            return
        pipe = self.redis.pipeline(transaction=False)
        for rid, _, after in wanted:
            pipe.xrange(stream_key(rid), min=b"(" + after if after != b"0-0" else "-")
        results = pipe.execute()
        with self.lock:
            for (rid, waiter, after), entries in zip(wanted, results):
                if waiter.last != after or waiter not in self.waiters.get(rid, ()):
                    continue  # handed over meanwhile, or no longer watched
                for entry_id, fields in entries:
                    waiter.last = entry_id
                    waiter.inbox.put(json.loads(fields[b"e"]))


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

    def events(self, request_id, check=None, every=0.5, waiter=None, ticks=False):
        """Yield events until a final one (to `waiter`, by default the request's first).

        `check(started)` runs every `every` seconds once started, events or not (while
        waiting, less often when thousands wait); when it returns an event (the client left,
        the worker died), that event ends the stream, unless a final event has landed
        meanwhile. With `ticks`, each check that finds nothing wrong yields {"t": "tick"} (a
        waiting client told how the line moves, chatbot.api.turns).
        """
        hub = self.hub()
        waiter, started = waiter or hub.watch(request_id), False
        pace = lambda: every if started else hub.spread(every, WAITING_CHECKS_PER_SECOND)  # noqa: E731
        next_check = time.monotonic() + pace()
        try:
            while True:
                try:
                    event = waiter.inbox.get(timeout=max(0.0, next_check - time.monotonic()))
                except queue.Empty:
                    event = None
                if event is not None:
                    started = started or event["t"] == STARTED
                    yield event
                    if event["t"] in FINAL:
                        return
                if check and time.monotonic() >= next_check:
                    next_check = time.monotonic() + pace()
                    verdict = check(started)
                    if verdict:
                        hub.unwatch(request_id, waiter)
                        yield from self._tail_or(request_id, waiter, verdict)
                        return
                    if ticks:
                        yield TICK
        finally:
            hub.unwatch(request_id, waiter)

    def _tail_or(self, request_id, waiter, verdict):
        """What the (no longer watched) waiter has not yet had, up to a final event: from its
        inbox, then from the stream; else the verdict."""
        while True:
            try:
                event = waiter.inbox.get_nowait()
            except queue.Empty:
                break
            yield event
            if event["t"] in FINAL:
                return
        try:
            after = waiter.last
            rest = self.redis.xrange(stream_key(request_id),
                                     min=b"(" + after if after != b"0-0" else "-")
        except redis.RedisError:
            rest = ()
        for _, fields in rest:
            event = json.loads(fields[b"e"])
            yield event
            if event["t"] in FINAL:
                return
        yield verdict


def init_app(app):
    app.extensions["relay"] = Relay(app.extensions["redis"], app.config["REDIS_URL"])

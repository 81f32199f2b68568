"""SSE notices (GET /api/events) through one Redis subscription per web process: a thread
(like the relay's hub) holds it for every stream of the process and hands each message to the
streams of its channel, so a client holding a thousand streams costs Redis no connection.

A stream subscribes through the thread and waits until Redis has confirmed the channel, so
nothing published after its headers go out is missed. After a Redis restart the thread
subscribes again to every channel still listened to (what was published meanwhile is lost,
as with any pub/sub; a request's tokens are read back from its stream by Last-Event-ID)."""
import logging
import os
import threading
import time
import uuid

import redis

from chatbot.line.relay import Inbox
from chatbot.redis_keys import SSE_WAKE, STREAMS
from chatbot.redis_pool import connect

log = logging.getLogger(__name__)
SUBSCRIBE_WAIT = 5.0  # seconds a new stream waits for Redis to confirm its channel


class Listener:
    """One stream's end of a channel: its messages, and whether the channel is subscribed."""

    def __init__(self, channel):
        self.channel, self.inbox, self.ready = channel, Inbox(), threading.Event()


class Hub(threading.Thread):
    def __init__(self, redis_url):
        super().__init__(daemon=True, name="sse-hub")
        self.redis_url, self.client = redis_url, connect(redis_url)
        self.wake = SSE_WAKE.format(uuid.uuid4())  # a stream rings it to have its channel taken
        self.listeners = {}  # channel -> {Listener}
        self.asked, self.subscribed = set(), set()  # channels sent to Redis, and confirmed
        self.lock = threading.Lock()

    def listen(self, channel):
        """A Listener of `channel`, once Redis has confirmed it (or SUBSCRIBE_WAIT passed)."""
        listener = Listener(channel)
        with self.lock:
            self.listeners.setdefault(channel, set()).add(listener)
            if channel in self.subscribed:
                listener.ready.set()
        if not listener.ready.is_set():
            try:
                self.client.publish(self.wake, "")
            except redis.RedisError:
                return listener  # the hub subscribes once Redis is back
            listener.ready.wait(SUBSCRIBE_WAIT)
        return listener

    def leave(self, listener):
        with self.lock:
            channel = self.listeners.get(listener.channel, set())
            channel.discard(listener)
            if not channel:
                self.listeners.pop(listener.channel, None)  # unsubscribed at the hub's next turn

    def run(self):
        while True:
            pubsub = None
            try:
                pubsub = connect(self.redis_url, max_connections=1).pubsub()
                pubsub.subscribe(self.wake)
                with self.lock:
                    self.asked, self.subscribed = set(), set()
                while True:
                    self._sync(pubsub)
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._hand_over(message)
            except redis.RedisError:
                time.sleep(1)  # Redis away: streams send keep-alives meanwhile
            except Exception:  # noqa: BLE001  the hub must outlive any surprise
                log.exception("SSE hub failed; starting over")
                time.sleep(1)
            finally:
                if pubsub is not None:
                    pubsub.close()

    def _sync(self, pubsub):
        """Subscribe to channels newly listened to, unsubscribe from those nobody listens to."""
        with self.lock:
            wanted = set(self.listeners)
            new, gone = wanted - self.asked, (self.asked - wanted)
            self.asked = (self.asked | new) - gone
            self.subscribed -= gone
        if new:
            pubsub.subscribe(*new)
        if gone:
            pubsub.unsubscribe(*gone)

    def _hand_over(self, message):
        channel = message["channel"].decode()
        with self.lock:
            if message["type"] == "subscribe" and channel in self.asked:
                self.subscribed.add(channel)
                for listener in self.listeners.get(channel, ()):
                    listener.ready.set()
            elif message["type"] == "message" and channel != self.wake:
                for listener in self.listeners.get(channel, ()):
                    listener.inbox.put(message["data"])


class Notices:
    """The process's hub, started on first use (after any fork of a server's workers), and the
    count of each asker's streams across processes (MAX_STREAMS_PER_KEY)."""

    def __init__(self, client, redis_url, max_per_asker, max_seconds):
        self.redis, self.redis_url = client, redis_url
        self.max_per_asker, self.max_seconds = max_per_asker, max_seconds
        self._hub, self._hub_pid, self._hub_lock = None, None, threading.Lock()

    def hub(self):
        with self._hub_lock:
            if self._hub is None or self._hub_pid != os.getpid():
                self._hub, self._hub_pid = Hub(self.redis_url), os.getpid()
                self._hub.start()
            return self._hub

    def open(self, asker):
        """A place for one more stream of `asker`: its id, or None when the asker holds
        MAX_STREAMS_PER_KEY open already. A place left by a process that died lapses after the
        longest a stream lasts."""
        stream_id, key, now = str(uuid.uuid4()), STREAMS.format(asker), time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zcard(key)
        _, held = pipe.execute()
        if self.max_per_asker and held >= self.max_per_asker:
            return None
        pipe.zadd(key, {stream_id: now + self.max_seconds + 60})
        pipe.expire(key, int(self.max_seconds) + 120)
        pipe.execute()
        return stream_id

    def close(self, asker, stream_id):
        try:
            self.redis.zrem(STREAMS.format(asker), stream_id)
        except redis.RedisError:
            pass  # it lapses by itself


def init_app(app):
    app.extensions["notices"] = Notices(app.extensions["redis"], app.config["REDIS_URL"],
                                        app.config["MAX_STREAMS_PER_KEY"],
                                        app.config["STREAM_MAX_SECONDS"])

"""A running request's heartbeat: while its worker's process lives, the request (and its
thread lock) stay alive; when the process dies, the beat expires and a waiting client or the
sweep declares the request lost. The same beat carries the stop check (cancelled, client
gone, ended elsewhere), so a cancel stops a request within BEAT_EVERY."""
import logging
import os
import threading
import time

import redis

from chatbot.line import events
from chatbot.line.core import INFO_TTL
from chatbot.redis_keys import BEAT, INFO, NONE

log = logging.getLogger(__name__)
HEARTBEAT_TTL = 5  # seconds a running request survives without a heartbeat from its worker
BEAT_EVERY = 0.25
THREAD_LOCK_TTL = 30  # seconds a turn's thread lock outlives its last renewal


class Heartbeat:
    """One per running request. One thread per process beats for all of them (a thread started
    per request cost more than a short request's whole run): start() hands it this one."""

    _beater, _beater_pid, _guard = None, None, threading.Lock()
    _running = set()

    def __init__(self, line, request_id, lock=None):
        self.line, self.request_id = line, request_id
        self.lock, self.why = lock, 0  # lock: the thread lock renewed with the beat
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
        key, token = self.lock or (NONE, "")
        try:
            why = self.line.scripts["beat"].call(
                info=INFO.format(self.request_id), beat=BEAT.format(self.request_id), lock=key,
                heartbeat_ttl=HEARTBEAT_TTL, info_ttl=INFO_TTL,
                lock_ttl_ms=THREAD_LOCK_TTL * 1000, lock_token=token, now=time.time())
        except redis.RedisError:
            log.warning("heartbeat of %s: redis does not answer", self.request_id)
            return
        if why and not self.why:
            log.info("%s told to stop: %s", self.request_id, events.STOP_REASONS[why])
            self.why = why

    def stop_asked(self):
        return bool(self.why)

    def stop(self):
        self.stopped.set()

"""What no worker will end: a request that waited too long in line (expired), one whose worker
died (lost), one whose record vanished. A waiting client's watchdog asks for its own request
(verdict), and beat's periodic sweep for the whole line (sweep)."""
import logging
import time

import redis

from chatbot.line import events
from chatbot.redis_keys import BEAT, INFO, STARTED, WAITING

log = logging.getLogger(__name__)


def verdict(line, request_id, queue):
    """For a waiting client: an error event if its request can no longer answer (its record
    vanished, it waited too long, its worker died, Redis has not answered for `redis_wait` s)
    or has ended without the client hearing (the relay then reads the final event from its
    stream), else None."""
    try:
        said = line.scripts["check"].call(info=INFO.format(request_id),
                                          beat=BEAT.format(request_id), now=time.time(),
                                          queue_timeout=line.queue_timeout)
    except redis.RedisError:
        line.away = line.away or time.monotonic()
        return events.UNAVAILABLE if time.monotonic() - line.away >= line.redis_wait else None
    line.away = None
    return {b"vanished": lambda: events.VANISHED, b"ended": lambda: events.ENDED,
            b"overdue": lambda: expire(line, request_id, queue),
            b"dead": lambda: lose(line, request_id, queue),
            b"abandoned": lambda: abandon(line, request_id, queue)}.get(said, lambda: None)()


def expire(line, request_id, queue):
    """A request that waited too long leaves the line; None if it started meanwhile."""
    if line.move(request_id, queue, ("queued",), "expired", line.expired)[0]:
        return line.expired
    return None


def abandon(line, request_id, queue):
    """A waiting request nobody will read: its client left and did not come back within its
    grace, or its web process died. It leaves the line (and its asker's share)."""
    if line.move(request_id, queue, ("queued",), "cancelled", events.CLIENT_GONE)[0]:
        return events.CLIENT_GONE
    return None


def lose(line, request_id, queue):
    """The worker running the request died: it ends as lost, and what it had streamed so far
    goes to `line.on_lost`. None if it had ended otherwise meanwhile (its own final event is on
    its way)."""
    if not line.move(request_id, queue, ("running",), "lost", events.LOST, only_if_dead=True)[0]:
        return None
    log.warning("request %s lost: its worker stopped beating", request_id)
    if line.on_lost is not None:
        try:
            line.on_lost(request_id, line.info(request_id), line.partial_reply(request_id))
        except Exception:  # the client still hears of the loss
            log.exception("could not store the lost reply of %s", request_id)
    return events.LOST


def sweep(line, queue):
    """Clear what no client will: waiting entries with no record or waiting too long, waiting
    requests whose web process died or whose client left beyond its grace, and a running
    request whose worker died. Returns how many were cleared."""
    cleared = 0
    for rid in line.redis.zrange(WAITING.format(queue), 0, -1):
        said = verdict(line, rid.decode(), queue)
        if said is events.VANISHED or said is events.ENDED:  # no record, or one moved on
            cleared += line.redis.zrem(WAITING.format(queue), rid)
        elif said:
            cleared += 1
    for rid in line.redis.smembers(STARTED.format(queue)):
        said = verdict(line, rid.decode(), queue)
        if said is events.VANISHED or said is events.ENDED:
            line.redis.srem(STARTED.format(queue), rid)
        cleared += said is events.LOST
    if cleared:
        line.announce(queue)
    return cleared


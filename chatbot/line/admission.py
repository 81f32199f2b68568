"""The web's side of the line: a request takes its place (admit), leaves it (cancel), its client
steps away and comes back (detach, resume), and SSE clients listen to its position."""
import json
import time

from chatbot.line import events
from chatbot.line.core import INFO_TTL
from chatbot.line.relay import LEASE_TTL
from chatbot.redis_keys import (ASKED, FAIR, INFO, JOB, LEASE, LISTENING, NONE, WAITING,
                                stream_key)

ROUND = 2520  # a request's cost in the fair order at weight 1: divisible by weights 1 to 10


class QueueFull(Exception):
    """MAX_QUEUE requests wait already."""


class ShareFull(QueueFull):
    """The asker has its share of the line (MAX_QUEUE_PER_KEY) waiting or running already."""


class SameAsked(Exception):
    """The same request (a retry) is waiting or running already: `request_id` is its id."""

    def __init__(self, request_id):
        super().__init__(request_id)
        self.request_id = request_id


class JobTooLarge(Exception):
    """The request would hold more than MAX_JOB_BYTES in Redis while it waits."""

    def __init__(self, size, limit):
        super().__init__(f"request too large to queue: {size} bytes, at most {limit} "
                         "(MAX_JOB_BYTES)")


def admit(line, request_id, queue, info, lease, job=None, asker="", weight=0, task=None,
          same="", band=0):
    """Take a place in line and return it. Raises QueueFull at MAX_QUEUE waiting, ShareFull when
    the asker has its share (MAX_QUEUE_PER_KEY) waiting or running, SameAsked when the request
    `same` as it (a retry: chatbot.api.turns) waits or runs already; returns None
    when the id has a record already (the caller picks a fresh one). `info` names the
    request's SSE `channel` (see events.sse_channel) and `owner`, with model and session; `job`
    is what a worker runs (chatbot.worker.tasks), refused past MAX_JOB_BYTES (JobTooLarge); `task`
    (list key, message) the broker message that has a worker run it, pushed only if the request
    is admitted. Requests take turns between askers by `weight` (0: in order of arrival; see
    lib.fair_score in lua/helpers.lua), within their `band` (0 interactive, 1 batch: after
    every interactive request)."""
    payload = json.dumps(job or {})
    if line.max_job_bytes and len(payload) > line.max_job_bytes:
        raise JobTooLarge(len(payload), line.max_job_bytes)
    now, cost = time.time(), ROUND // weight if weight else 0
    fields = {**info, "queue": queue, "state": "queued", "queued_at": now, "lease": lease,
              "asker": asker, "cost": cost}
    position = line.scripts["admit"].call(
        waiting=WAITING.format(queue), info=INFO.format(request_id),
        stream=stream_key(request_id), lease=LEASE.format(lease), fair=FAIR.format(queue),
        job_key=JOB.format(request_id), task_list=task[0] if task else NONE,
        asked=ASKED.format(queue, asker), max_per_asker=line.max_per_asker, now=now,
        max_queue=line.max_queue, request_id=request_id,
        fields=json.dumps([str(x) for kv in fields.items() for x in kv]), ttl=INFO_TTL,
        lease_ttl=LEASE_TTL, channel=info.get("channel", request_id), asker=asker,
        cost=cost, job=payload, task=task[1] if task else "", same=same or "", band=band,
        **line.announcing(queue))
    if isinstance(position, bytes):
        raise SameAsked(position.decode())
    if position == 0:
        raise QueueFull()
    if position == -2:
        raise ShareFull()
    return None if position < 0 else position


def price_per_token(weight, tokens_per_turn):
    """A token's cost in the fair order when requests are charged by their tokens
    (FAIR_COST=tokens): a request of `tokens_per_turn` tokens costs what one request does."""
    return ROUND / weight / tokens_per_turn if weight else 0


def charge(job, reply):
    """What a request cost in the fair order, from its tokens (prompt and generated), when its
    job says a token's price (FAIR_COST=tokens); else None (the price it was admitted at)."""
    final, per_token = reply.get("final") or {}, job.get("per_token")
    if not per_token or not final:
        return None
    return round((final.get("prompt_eval_count", 0) + final.get("eval_count", 0)) * per_token)


def cancel(line, request_id, event=events.CANCELLED):
    """A queued request leaves the line now, its client told; a running one is flagged and its
    worker stops within a heartbeat. Returns the state it was in (None: unknown)."""
    info = line.info(request_id)
    if not info:
        return None
    line.move(request_id, info["queue"], ("queued",), "cancelled", event, cancel_running=True)
    return info["state"]


def detach(line, request_id, lease, grace):
    """A resumable request's client left: the request goes on for `grace` seconds, and is given
    up (the worker stops it; its partial reply is stored as cancelled) unless the client comes
    back. False if it has ended, or another process holds it now."""
    return bool(line.scripts["detach"].call(info=INFO.format(request_id), lease=lease,
                                            until_time=time.time() + grace))


def resume(line, request_id, lease):
    """The client came back through the process with `lease`. Returns the state, None if the
    request is unknown."""
    state = line.scripts["resume"].call(info=INFO.format(request_id), lease=lease,
                                        lease_ttl=LEASE_TTL)
    return state.decode() if state else None


def listen(line, request_id, delta):
    """An SSE client starts (+1) or stops (-1) listening to a request's notices."""
    if line.redis.hincrby(LISTENING, request_id, delta) <= 0:
        line.redis.hdel(LISTENING, request_id)

"""The worker's side of the line: it claims the head of the line and gets a Running handle,
through which the flow streams the reply, hears a stop, shows a step, and which ends the
request exactly once."""
import functools
import json
import logging
import time
import uuid

from chatbot.line import admission, eta, events
from chatbot.line.heartbeat import HEARTBEAT_TTL, THREAD_LOCK_TTL, Heartbeat
from chatbot.ops import logs, timing
from chatbot.redis_keys import (FAIR, INFO, NONE, RESPONSE, STARTED, THREAD, TOKENS_KEPT, WAITING,
                                WARM, stream_key)

log = logging.getLogger(__name__)
QUIET_EVERY = 0.05  # seconds a quiet request's chunks wait to go out together


@functools.lru_cache(maxsize=16)
def _claim_events(queue_timeout):
    """The claim's events and their SSE notices, the same for every claim."""
    expired = events.expired(queue_timeout)
    return {"started_fmt": '{"t": "%s", "waited": %%s}' % events.STARTED,
            "started_notice": events.sse_message(events.STARTED, {}),
            "gone_event": json.dumps(events.CLIENT_GONE),
            "gone_notice": events.sse_notice(events.CLIENT_GONE),
            "expired_event": json.dumps(expired), "expired_notice": events.sse_notice(expired)}


def claim(line, queue, task_list=None, also=None, wait=None):
    """Take the head of the line to run it (lua/claim.lua), with its thread's lock when that is
    free, and one task message off the broker's `task_list` if given. Returns None when nobody
    waits, else a Running. `also.queue(pipe)` queues reads that go in the same round trip, and
    `also.take(results)` gets their results (what the request will need: the calibrations).

    `wait` (list, seconds): first wait that long for a message on that list, taking it, in the
    same round trip (Redis runs the claim once the BRPOP returns, so a worker woken by a
    message wakes once, claim in hand). Then returns (Running or None, the message or None)."""
    call, token = _claim_call(line, queue, task_list, later=wait is not None)
    first = (lambda pipe: pipe.brpop([wait[0]], timeout=wait[1])) if wait else None
    (out,), read = line.one_trip([call], also.queue if also else None, first=first)
    for result in read:
        if isinstance(result, Exception):
            raise result
    message, read = (read[0], read[1:]) if wait else (None, read)
    if also:
        also.take(read)
    claimed = _claimed(line, queue, out, token)
    if wait is None:
        return claimed
    return claimed, (message[1] if message else None)


def _claim_call(line, queue, task_list, later=False):
    """(the claim script bound for a round trip, the lock token it may take). `later`: it runs
    later than it is made (behind a wait, or a request's run), so it takes Redis's time."""
    token = str(uuid.uuid4())
    call = line.scripts["claim"].bound(
        waiting=WAITING.format(queue), started=STARTED.format(queue), fair=FAIR.format(queue),
        task_list=task_list or NONE,
        now="now" if later else time.time(), heartbeat_ttl=HEARTBEAT_TTL,
        queue_timeout=line.queue_timeout, **_claim_events(line.queue_timeout),
        ttl=line.relay_ttl, **line.announcing(queue), lock_token=token,
        lock_ttl_ms=THREAD_LOCK_TTL * 1000, take_task="1" if task_list else "0",
        tally_ttl=TOKENS_KEPT, warm=WARM.format(queue), **line.order)
    return call, token


def _claimed(line, queue, out, token):
    """The Running a claim's result stands for, or None."""
    if out[0] != b"run":
        return None
    _, request_id, waited, locked, job, lock_key, how = out
    claimed = Running(line, queue, request_id.decode(), float(waited),
                      json.loads(job) if job else None,
                      (lock_key.decode(), token) if locked else None)
    claimed.picked = how.decode()
    return claimed


class NextClaim:
    """The claim of the next request, sent in the round trip that ends this one (after the
    ending, so the thread lock it released can be taken): a worker running one request after
    another saves a round trip per request. Arguments as claim's; `claimed` is the Running
    (None: nobody waited) once `sent`."""

    def __init__(self, line, queue, task_list=None, also=None):
        self.line, self.queue, self.also = line, queue, also
        self.call, self.token = _claim_call(line, queue, task_list, later=True)
        self.sent, self.claimed = False, None

    def queue_reads(self, pipe):
        if self.also:
            self.also.queue(pipe)

    def take(self, out, read):
        if self.also and not any(isinstance(r, Exception) for r in read):
            self.also.take(read)  # else the request reads them itself
        self.sent, self.claimed = True, _claimed(self.line, self.queue, out, self.token)


class Running:
    """A request this worker claimed. It ends once, through end() (its reply: done, failed or
    cancelled) or close() (a failure, if it ended no other way); a second ending does nothing.
    `job` is what to run (None: it expired in Redis), `lock` the thread lock while this worker
    holds it."""

    def __init__(self, line, queue, request_id, waited, job, lock):
        self.line, self.queue, self.request_id = line, queue, request_id
        self.waited, self.job, self.lock = waited, job, lock
        self.state = None  # how it ended, once it has
        self.waiting = None  # how many wait in line after its ending (None: not known)
        self.channel = (job or {}).get("channel", request_id)
        self.chunks = Chunks(line, request_id, self.channel, (job or {}).get("quiet", False))
        self.heartbeat = Heartbeat(line, request_id, lock)
        self.marks, self.metrics = {}, None
        self.began = time.monotonic()  # when it started to run (start() sets it again)
        self.picked = "fair"  # how the claim picked it (lua/claim.lua)
        self.next = None  # a NextClaim sent with its ending, if the worker goes on
        self.max_seconds = (job or {}).get("max_seconds") or 0  # MAX_REQUEST_SECONDS, as admitted
        self.deadline = None

    def start(self, marks, metrics):
        """It runs: beating from now, and for at most its max_seconds. `marks` its timings,
        `metrics` the batch of metric writes sent with its ending."""
        self.marks, self.metrics = marks, metrics
        self.began = time.monotonic()
        if self.max_seconds > 0:
            self.deadline = time.monotonic() + self.max_seconds
        self.heartbeat.start()

    # --- what the flow uses -------------------------------------------------------------

    def emit(self, event):
        """A streamed chunk, to the waiting client and the SSE listeners."""
        self.chunks(event)

    def stop_asked(self):
        """Cancelled, its client gone, ended elsewhere, or past its deadline: stop."""
        return self.heartbeat.stop_asked() or self.overdue_error() is not None

    def overdue_error(self):
        """The error of a request that ran past its deadline, else None."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            return {k: v for k, v in events.overdue(self.max_seconds).items() if k != "t"}
        return None

    def phase(self, phase, event, data=None):
        """A step its client may wait on (summarizing its history, say): `phase` in
        GET /api/queue/<id> (None clears it), and `event` to SSE listeners."""
        pipe = self.line.redis.pipeline(transaction=False)
        if phase:
            pipe.hset(INFO.format(self.request_id), "phase", phase)
        else:
            pipe.hdel(INFO.format(self.request_id), "phase")
        pipe.publish(self.channel, events.sse_message(event, data or {}))
        pipe.execute()

    def end(self, reply):
        """End it with the flow's reply: its state and final event, the chunks not yet sent,
        its tokens settled against its reservation and its metrics written, all in one round
        trip, before its client hears; the thread lock released with it."""
        if self.state is not None:
            return
        self.state, event = events.outcome({**reply, "marks": self.marks, "waited": self.waited})
        generated = (reply.get("final") or {}).get("eval_count")
        logs.bind(tokens=generated)
        if generated is None:  # it ended before its final chunk: a token per chunk streamed
            generated = reply.get("chunks", 0)
        self.marks["ending"] = timing.now()
        self.heartbeat.lock = None
        job = self.job or {}
        if self.state == "done" and self.metrics is not None and job.get("kind") != "embed":
            eta.record(self.metrics.pipe, self.queue, job.get("model", ""), job.get("asker", ""),
                       time.monotonic() - self.began, job.get("size", "s"))
        kept = job.get("cache")
        if kept and self.state == "done" and self.metrics is not None:  # RESPONSE_CACHE_TTL
            self.metrics.pipe.set(RESPONSE.format(kept[0]), json.dumps(
                {"d": event["d"], "reply": event["reply"]}), ex=kept[1])
        ended = self.line.move(
            self.request_id, self.queue, ("running",), self.state, event, lock=self.lock,
            tally=generated, then=self.metrics, charge=admission.charge(job, reply),
            before=[self.chunks.bound(chunk) for chunk in self.chunks.take()], after=self.next)
        if ended[0]:
            self.waiting, self.lock = ended[3], None  # the script released the lock

    def fail(self, error):
        self.end({"error": {"status": error["status"], "error": error["error"]}})

    # --- what the task uses -------------------------------------------------------------

    def hold_thread(self, wait=600.0):
        """Hold the thread's lock for this turn, waiting while another turn has it (across
        workers and hosts). False if told to stop first, or after `wait` s."""
        if self.lock is None:
            key, token = THREAD.format(self.job["session_id"], self.job["model"]), str(uuid.uuid4())
            deadline = time.monotonic() + wait
            while not self.line.redis.set(key, token, nx=True, px=THREAD_LOCK_TTL * 1000):
                if self.stop_asked() or time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
            self.lock = self.heartbeat.lock = (key, token)
        return True

    def close(self):
        """However it went: the heartbeat stops, a request not ended fails, a lock still held is
        released."""
        self.heartbeat.stop()
        if self.state is None:
            self.fail(events.NO_REPLY)
        if self.lock:
            key, token = self.lock
            self.line.scripts["release"].call(lock=key, token=token)
            self.lock = None


class Chunks:
    """The flow's emit: each chunk numbered from 1, so that a client that comes back asks for
    what follows the last it has (GET /api/requests/<id>/stream?after=N). A quiet request's
    client waits for the whole reply, so its chunks (for SSE listeners, and what a lost request
    keeps) go out QUIET_EVERY s at a time, the last with the ending."""

    def __init__(self, line, request_id, channel, quiet):
        self.line, self.request_id, self.channel, self.quiet = line, request_id, channel, quiet
        self.count, self.held, self.since = 0, [], 0.0

    def __call__(self, event):
        self.count += 1
        self.held.append({**event, "n": self.count})
        if not self.quiet:
            self.flush()
        elif len(self.held) == 1:
            self.since = time.monotonic()
        elif time.monotonic() - self.since > QUIET_EVERY:
            self.flush()

    def bound(self, event):
        """The emit script for one chunk (lua/emit.lua), for a round trip."""
        return self.line.scripts["emit"].bound(
            info=INFO.format(self.request_id), stream=stream_key(self.request_id),
            request_id=self.request_id, event=json.dumps(event), ttl=self.line.relay_ttl,
            channel=self.channel, notice=events.sse_notice(event))

    def flush(self):
        if self.held:
            self.line.one_trip([self.bound(chunk) for chunk in self.held])
            self.held = []

    def take(self):
        """The chunks not yet sent, for the ending's round trip."""
        held, self.held = self.held, []
        return held

"""The worker's tasks, kept thin: a request's life belongs to the line (chatbot.line), its work
to the flow (chatbot.flow)."""
import functools
import json
import logging
import time

from celery import shared_task
from celery.worker import state as worker_state
from flask import current_app

from chatbot import line as lines, logs, timing
from chatbot.flow.flow import create_chat_flow
from chatbot.flow.window import Fetched
from chatbot.store.models import db, utcnow
from chatbot.worker import QUEUE

from chatbot import lifecycle  # noqa: F401  registers chatbot.archive_idle_sessions

log = logging.getLogger(__name__)
DRAIN_SECONDS = 0.5  # a task runs further requests for this long, then hands back to Celery
LINGER_SECONDS = 0.25  # ... waiting this long for each next one when none waits
QUIET_EVERY = 0.05  # seconds a quiet request's chunks wait to go out together


@shared_task(name="chatbot.run_next", bind=True)
def run_next(self, queue=QUEUE):
    """Run the request at the head of `queue`'s line (chatbot.line keeps it in fair order).
    Every admitted request sends one of these, so there is a task for every request; one that
    finds the line empty (its request was cancelled, or taken by an earlier task) does
    nothing, and so does a redelivered or duplicated one.

    The tasks are interchangeable, so a task keeps going while work comes, for up to
    DRAIN_SECONDS: while more wait it runs the next too, its claim taking one waiting task
    message off the queue in exchange; when none waits, it waits LINGER_SECONDS for the
    next task message itself, its claim sent behind the wait so that both come back in one
    round trip (Line.claim_next's `wait`). A busy line then costs one Celery delivery, ack and
    log line per drain instead of per request, and back-to-back requests skip the broker's
    hop."""
    line, writes = current_app.extensions["line"], Writes()
    drain_until = time.monotonic() + DRAIN_SECONDS
    # owed: the next claim takes a waiting task message, this task's own having run a request;
    # wait: the line is empty, so the next claim first waits for a task message (taking it)
    ran, owed, wait, task_id = 0, False, False, self.request.id
    try:
        while True:
            marks = {"task": timing.now()}
            logs.clear()
            # The claim also takes the thread's lock when it is free (one round trip for
            # both), and reads the calibrations.
            calibrations = Fetched()
            if wait:
                claimed, message = line.claim_next(queue, also=calibrations,
                                                   wait=(queue, LINGER_SECONDS))
                marks["task"] = timing.now()  # the hop ends when the message came
                task_id, owed = _task_id(queue, message), False
                if claimed is None and task_id is None:
                    break  # none came (or not ours): back to Celery
            else:
                claimed = line.claim_next(queue, task_list=queue if owed else None,
                                          also=calibrations)
            logs.bind(task_id=task_id)  # the message that asked: joins a request to its task
            if claimed is None:
                if not owed:  # this task's message (or the one it waited for) found none
                    log.info("nothing waiting in %s", queue)
                wait = True
            else:
                waiting = run_claimed(line, queue, claimed, marks, writes, calibrations.known)
                ran, owed = ran + 1, True
                wait = waiting == 0  # its ending said the line was empty: wait for a message
            if time.monotonic() > drain_until or worker_state.should_stop \
                    or worker_state.should_terminate:
                break
    finally:
        writes.close()
    return ran


class Writes:
    """The Connection a task's turns write through, opened at the first and kept for the
    next (closed, for a new one, after a request that failed: it may be broken)."""

    def __init__(self):
        self.conn = None

    def get(self):
        if self.conn is None:
            self.conn = db.engine.connect()
        return self.conn

    def close(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001  a broken connection is let go all the same
                log.warning("closing the writes' connection failed", exc_info=True)


def _task_id(queue, message):
    """The id of a task message a waiting claim took (a run_next: this task runs its request
    instead), None if none came. A message not ours goes back where it was, for Celery."""
    if message is None:
        return None
    try:
        headers = json.loads(message)["headers"]
        task, task_id = headers["task"], headers["id"]
    except (ValueError, KeyError, TypeError):
        task = task_id = None
    if task != "chatbot.run_next":
        current_app.extensions["redis"].rpush(queue, message)
        return None
    return task_id


def run_claimed(line, queue, claimed, marks, writes, calibrations=None):
    """One request, claimed: its flow, and its ending, whatever happens. Returns how many
    requests wait in the line after it (None: not known)."""
    ext = current_app.extensions
    request_id, waited, job, lock = claimed
    if job is None:  # its job expired in Redis: nothing to run, but its client must hear
        return line.finish(request_id, queue,
                           {"error": {"status": 500, "error": "the request was lost"}}, lock)
    # Said once, by the "finished" line (a running request shows in GET /api/queue).
    logs.bind(request_id=request_id, session_id=job["session_id"], model=job["model"],
              waited=round(waited, 3), upstream=job.get("host"))
    metrics = ext["metrics"].batch()  # written with the ending, in its round trip
    metrics.observe("chatbot_queue_wait_seconds", waited, queue=queue)
    log.debug("started after %.3f s in line", waited)
    heartbeat = lines.Heartbeat(line, request_id, queue)
    heartbeat.lock = lock
    heartbeat.start()
    ended, held, waiting = [], [lock], [None]  # held: the thread lock while this task has it
    emit = Chunks(line, request_id, job["channel"], job.get("quiet", False))

    def end(reply):
        ended.append(lines.outcome(reply)[0])
        generated = (reply.get("final") or {}).get("eval_count")
        logs.bind(tokens=generated)
        marks["ending"] = timing.now()
        heartbeat.lock = None
        # The tokens are counted in the ending's round trip, before the client hears; the
        # request's metrics follow in the same round trip.
        waiting[0] = line.finish(request_id, queue, {**reply, "marks": marks, "waited": waited},
                                 held[0], tally=ext["tokens"].tally(job.get("asker"), generated),
                                 then=metrics, chunks=emit.take(), channel=job["channel"])
        if waiting[0] is not None:
            held[0] = None  # the line released it with the ending

    try:
        if held[0] is None:  # another turn holds the thread: wait for it
            held[0] = heartbeat.lock = line.lock_thread(
                job["session_id"], job["model"], heartbeat.stop_asked)
            if held[0] is None:  # the client left while another turn held its thread
                end({"status": "cancelled"})
                return waiting[0]
        marks["begun"] = timing.now()
        # The turn's writes go through a plain Connection: half the cost per commit of the
        # ORM session (chatbot.store.sessions).
        chat_flow().run({
            "job": job, "marks": marks, "started_at": utcnow(),
            "upstream": ext["router"].upstream(job.get("host")),
            "upstream_wait": current_app.config["UPSTREAM_WAIT_SECONDS"],
            "emit": emit,
            "stop": heartbeat.stop_asked,
            "end": end, "windows": ext["windows"], "calibration": ext["calibration"],
            "calibrations": calibrations,
            "metrics": metrics, "reserve": current_app.config["CONTEXT_REPLY_RESERVE"],
            "summarizer": summarizer(current_app.config),
            "phase": functools.partial(line.set_phase, request_id, job["channel"]),
            "writes": writes.get(),
        })
    except Exception:  # the waiting client must hear of it rather than hang
        writes.close()
        end({"error": {"status": 500, "error": logs.incident(log, "request failed")}})
    finally:
        heartbeat.stopped.set()
        if not ended:
            end({"error": {"status": 500, "error": "the request ended without a reply"}})
        if held[0]:
            line.unlock_thread(held[0])
        metrics.flush()
        db.session.remove()  # the next request of the drain starts with a session of its own
        log.info("finished: %s", ended[0])
        # The solo pool runs tasks where Celery receives them: its next "received" line must
        # not carry this request's fields.
        logs.clear()
    return waiting[0]


@functools.cache
def chat_flow():
    """The chat flow, built once (its nodes keep no request's state: see TimedFlow)."""
    return create_chat_flow()


def summarizer(config):
    """The flow's summary settings: None unless CONTEXT_STRATEGY=summarize."""
    if config["CONTEXT_STRATEGY"] != "summarize":
        return None
    return {"model": config["SUMMARY_MODEL"], "max_tokens": config["SUMMARY_MAX_TOKENS"]}


class Chunks:
    """The flow's emit: each chunk numbered from 1, so that a client that comes back asks for
    what follows the last it has (GET /api/requests/<id>/stream?after=N). A quiet request's
    client waits for the whole reply, so its chunks (for SSE listeners, and what a lost
    request keeps) go out QUIET_EVERY s at a time, the last with the ending."""

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

    def flush(self):
        if self.held:
            self.line.emit(self.request_id, self.channel, self.held)
            self.held = []

    def take(self):
        """The chunks not yet sent, for the ending's round trip."""
        held, self.held = self.held, []
        return held


@shared_task(name="chatbot.sweep_line")
def sweep_line():
    """Beat's periodic job: clear line entries no client will (see Line.sweep)."""
    line = current_app.extensions["line"]
    cleared = sum(line.sweep(queue) for queue in current_app.extensions["router"].queues.values())
    if cleared:
        log.info("swept %d stale request(s) from the line", cleared)
    return cleared

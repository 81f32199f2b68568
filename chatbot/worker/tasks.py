"""The worker's tasks, kept thin: a request's life belongs to the line (chatbot.line), its work
to the flow (chatbot.flow)."""
import functools
import json
import logging
import time

from celery import shared_task
from celery.worker import state as worker_state
from flask import current_app

from chatbot.line import events, running as runs, sweep
from chatbot.ops import logs, timing
from chatbot.upstream import resident
from chatbot.flow.flow import create_chat_flow
from chatbot.flow.title import Titles
from chatbot.flow.window import Fetched
from chatbot.store.models import db, utcnow
from chatbot.worker import QUEUE

from chatbot.store import lifecycle  # noqa: F401  registers chatbot.archive_idle_sessions

log = logging.getLogger(__name__)
DRAIN_SECONDS = 0.5  # a task runs further requests for this long, then hands back to Celery
LINGER_SECONDS = 0.25  # ... waiting this long for each next one when none waits
TITLES = Titles()  # what this worker owes new sessions (AUTO_TITLES), asked when it idles


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
    round trip (chatbot.line.running.claim's `wait`). While others wait, the next request is
    claimed in the round trip that ends the one before it (chatbot.line.running.NextClaim). A
    busy line then costs one Celery delivery, ack and log line per drain instead of per
    request, one round trip to Redis per request, and back-to-back requests skip the broker's
    hop. The titles its worker owes (TITLES) are asked only when a linger found nobody, each
    given up once a request waits: a task that owes some and ends with its line empty lingers
    once more first."""
    line, writes = current_app.extensions["line"], Writes()
    drain_until = time.monotonic() + DRAIN_SECONDS
    # owed: the next claim takes a waiting task message, this task's own having run a request;
    # wait: the line is empty, so the next claim first waits for a task message (taking it);
    # busy: others waited when the last request ended, so the next one is claimed in the
    # round trip that ends the one before it (runs.NextClaim), which then is `pending`
    ran, owed, wait, busy, pending, task_id = 0, False, False, False, None, self.request.id
    idle, late = False, False  # a linger found nobody; the drain went on past its end
    try:
        while True:
            marks = {"task": timing.now()}
            logs.clear()
            # The claim also takes the thread's lock when it is free (one round trip for
            # both), and reads the calibrations.
            calibrations = Fetched()
            if pending is not None:  # claimed already, with the last one's ending
                claimed, calibrations, pending = pending.claimed, pending.also, None
            elif wait:
                claimed, message = runs.claim(line, queue, also=calibrations,
                                              wait=(queue, LINGER_SECONDS))
                marks["task"] = timing.now()  # the hop ends when the message came
                task_id, owed = _task_id(queue, message), False
                if claimed is None and task_id is None:
                    idle = True
                    break  # none came (or not ours): back to Celery
            else:
                claimed = runs.claim(line, queue, task_list=queue if owed else None,
                                     also=calibrations)
            logs.bind(task_id=task_id)  # the message that asked: joins a request to its task
            if claimed is None:
                if not owed:  # this task's message (or the one it waited for) found none
                    log.info("nothing waiting in %s", queue)
                wait = True
            else:
                going_on = not _time_to_stop(drain_until)
                if busy and going_on:
                    claimed.next = runs.NextClaim(line, queue, task_list=queue, also=Fetched())
                waiting = run_claimed(claimed, marks, writes, calibrations.known)
                ran, owed = ran + 1, True
                wait = waiting == 0  # its ending said the line was empty: wait for a message
                busy = bool(waiting)
                if claimed.next is not None and claimed.next.sent:
                    pending = claimed.next  # a request claimed is run, whatever the time
                    continue
            if _time_to_stop(drain_until):
                if not (wait and TITLES.owed) or late or _stopping():
                    break
                late = True  # one more linger: the titles are asked if nobody comes
        if idle and TITLES.owed and not _stopping():
            try:  # nobody came for LINGER_SECONDS: the worker would idle
                TITLES.ask(line, queue, writes.get())
            except Exception:  # noqa: BLE001  a title is never worth a failed task
                logs.incident(log, "asking for titles failed")
    finally:
        writes.close()
    return ran


def _time_to_stop(drain_until):
    return time.monotonic() > drain_until or _stopping()


def _stopping():
    return worker_state.should_stop or worker_state.should_terminate


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


def run_claimed(running, marks, writes, calibrations=None):
    """One request, claimed: its flow, and its ending, whatever happens. Returns how many
    requests wait in the line after it (None: not known)."""
    ext, job = current_app.extensions, running.job
    if job is None:  # its job expired in Redis: nothing to run, but its client must hear
        running.fail(events.NO_JOB)
        running.close()
        return running.waiting
    # Said once, by the "finished" line (a running request shows in GET /api/queue).
    logs.bind(request_id=running.request_id, session_id=job["session_id"], model=job["model"],
              waited=round(running.waited, 3), upstream=job.get("host"))
    metrics = ext["metrics"].batch()  # written with the ending, in its round trip
    metrics.observe("chatbot_queue_wait_seconds", running.waited, queue=running.queue)
    metrics.inc("chatbot_line_picks_total", queue=running.queue, pick=running.picked)
    log.debug("started after %.3f s in line", running.waited)
    running.start(marks, metrics)
    try:
        if not running.hold_thread():  # told to stop while another turn held its thread
            overdue = running.overdue_error()
            running.end({"error": overdue} if overdue else {"status": "cancelled"})
            return running.waiting
        marks["begun"] = timing.now()
        # The turn's writes go through a plain Connection: half the cost per commit of the
        # ORM session (chatbot.store.sessions).
        chat_flow().run({
            "job": job, "running": running, "marks": marks, "started_at": utcnow(),
            "upstream": ext["router"].upstream(job.get("host")),
            "upstream_wait": current_app.config["UPSTREAM_WAIT_SECONDS"],
            "windows": ext["windows"], "calibration": ext["calibration"],
            "calibrations": calibrations,
            "metrics": metrics, "reserve": current_app.config["CONTEXT_REPLY_RESERVE"],
            "summarizer": summarizer(current_app.config),
            "auto_titles": current_app.config["AUTO_TITLES"], "titles": TITLES,
            "writes": writes.get(),
        })
    except Exception:  # the waiting client must hear of it rather than hang
        writes.close()
        running.fail(events.error_event(500, logs.incident(log, "request failed")))
    finally:
        running.close()
        metrics.flush()
        db.session.remove()  # the next request of the drain starts with a session of its own
        log.info("finished: %s", running.state)
        # The solo pool runs tasks where Celery receives them: its next "received" line must
        # not carry this request's fields.
        logs.clear()
    return running.waiting


@functools.cache
def chat_flow():
    """The chat flow, built once (its nodes keep no request's state: see TimedFlow)."""
    return create_chat_flow()


def summarizer(config):
    """The flow's summary settings: None unless CONTEXT_STRATEGY=summarize."""
    if config["CONTEXT_STRATEGY"] != "summarize":
        return None
    return {"model": config["SUMMARY_MODEL"], "max_tokens": config["SUMMARY_MAX_TOKENS"]}


@shared_task(name="chatbot.sweep_line")
def sweep_line():
    """Beat's periodic job: clear line entries no client will (see chatbot.line.sweep)."""
    line = current_app.extensions["line"]
    queues = current_app.extensions["router"].queues.values()
    cleared = sum(sweep.sweep(line, queue) for queue in queues)
    if cleared:
        log.info("swept %d stale request(s) from the line", cleared)
    return cleared


@shared_task(name="chatbot.keep_models_loaded")
def keep_models_loaded(preload=False):
    """PINNED_MODELS (and PRELOAD_MODELS, when the maintenance worker starts) loaded on every
    idle host that has dropped them (chatbot.upstream.resident)."""
    config = current_app.config
    pinned = config["PINNED_MODELS"]
    models = pinned | config["PRELOAD_MODELS"] if preload else pinned
    if not models:
        return []
    return resident.keep_loaded(current_app.extensions["router"], models,
                                lambda model: -1 if model in pinned else config["KEEP_ALIVE_MAX"])

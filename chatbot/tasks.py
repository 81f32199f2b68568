"""The worker's tasks, kept thin: a request's life belongs to the line (chatbot.line), its work
to the flow (chatbot.flow)."""
import functools
import logging
import time

from celery import shared_task
from celery.worker import state as worker_state
from flask import current_app

from chatbot import line as lines, logs, timing
from chatbot.flow.flow import create_chat_flow
from chatbot.store.models import db, utcnow
from chatbot.worker import QUEUE

from chatbot import lifecycle  # noqa: F401  registers chatbot.archive_idle_sessions

log = logging.getLogger(__name__)
DRAIN_SECONDS = 1.0  # a task runs further waiting requests for this long, then hands back


@shared_task(name="chatbot.run_next", bind=True)
def run_next(self, queue=QUEUE):
    """Run the request at the head of `queue`'s line (chatbot.line keeps it in fair order).
    Every admitted request sends one of these, so there is a task for every request; one that
    finds the line empty (its request was cancelled, or taken by an earlier task) does
    nothing, and so does a redelivered or duplicated one.

    While more wait, the task runs the next too (for up to DRAIN_SECONDS), and its claim
    takes one waiting task message off the queue in exchange: the tasks are interchangeable,
    and a busy line then costs one Celery delivery, ack and log per drain instead of per
    request."""
    line = current_app.extensions["line"]
    drain_until = time.monotonic() + DRAIN_SECONDS
    ran = 0
    while True:
        marks = {"task": timing.now()}
        logs.clear()
        logs.bind(task_id=self.request.id)  # which task ran which request, for Flower's view
        # The claim also takes the thread's lock when it is free (one round trip for both).
        claimed = line.claim_next(queue, task_list=queue if ran else None)
        if claimed is None:
            if not ran:
                log.info("nothing waiting in %s", queue)
            return ran
        run_claimed(line, queue, claimed, marks)
        ran += 1
        if time.monotonic() > drain_until or worker_state.should_stop \
                or worker_state.should_terminate:
            return ran


def run_claimed(line, queue, claimed, marks):
    """One request, claimed: its flow, and its ending, whatever happens."""
    ext = current_app.extensions
    request_id, waited, job, lock = claimed
    if job is None:  # its job expired in Redis: nothing to run, but its client must hear
        line.finish(request_id, queue, {"error": {"status": 500, "error": "the request was lost"}},
                    lock)
        return
    logs.bind(request_id=request_id, session_id=job["session_id"], model=job["model"])
    metrics = ext["metrics"].batch()  # written in one round trip once the client has heard
    metrics.observe("chatbot_queue_wait_seconds", waited, queue=queue)
    log.info("started after %.3f s in line, upstream %s", waited, job.get("host"))
    heartbeat = lines.Heartbeat(line, request_id, queue)
    heartbeat.lock = lock
    heartbeat.start()
    ended, held = [], [lock]  # the thread lock while this task still holds it

    def end(reply):
        ended.append(lines.outcome(reply)[0])
        generated = (reply.get("final") or {}).get("eval_count")
        logs.bind(tokens=generated)
        marks["ending"] = timing.now()
        heartbeat.lock = None
        # The tokens are counted in the ending's round trip, before the client hears.
        if line.finish(request_id, queue, {**reply, "marks": marks, "waited": waited}, held[0],
                       tally=ext["tokens"].tally(job.get("asker"), generated)):
            held[0] = None  # the line released it with the ending

    try:
        if held[0] is None:  # another turn holds the thread: wait for it
            held[0] = heartbeat.lock = line.lock_thread(
                job["session_id"], job["model"], heartbeat.stop_asked)
            if held[0] is None:  # the client left while another turn held its thread
                end({"status": "cancelled"})
                return
        marks["begun"] = timing.now()
        create_chat_flow().run({
            "job": job, "marks": marks, "started_at": utcnow(), "upstream": ext["router"].upstream(job.get("host")),
            "emit": chunks(line, request_id, job["channel"]),
            "stop": heartbeat.stop_asked,
            "end": end, "windows": ext["windows"], "calibration": ext["calibration"],
            "metrics": metrics, "reserve": current_app.config["CONTEXT_REPLY_RESERVE"],
            "summarizer": summarizer(current_app.config),
            "phase": functools.partial(line.set_phase, request_id, job["channel"]),
        })
    except Exception:  # the waiting client must hear of it rather than hang
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


def summarizer(config):
    """The flow's summary settings: None unless CONTEXT_STRATEGY=summarize."""
    if config["CONTEXT_STRATEGY"] != "summarize":
        return None
    return {"model": config["SUMMARY_MODEL"], "max_tokens": config["SUMMARY_MAX_TOKENS"]}


def chunks(line, request_id, channel):
    """The flow's emit: each chunk numbered from 1, so that a client that comes back asks
    for what follows the last it has (GET /api/requests/<id>/stream?after=N)."""
    count = [0]

    def emit(event):
        count[0] += 1
        line.emit(request_id, channel, {**event, "n": count[0]})
    return emit


@shared_task(name="chatbot.sweep_line")
def sweep_line():
    """Beat's periodic job: clear line entries no client will (see Line.sweep)."""
    line = current_app.extensions["line"]
    cleared = sum(line.sweep(queue) for queue in current_app.extensions["router"].queues.values())
    if cleared:
        log.info("swept %d stale request(s) from the line", cleared)
    return cleared

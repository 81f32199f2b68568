"""Celery in Flask's pattern: tasks run inside an app context. Tasks stay thin: build the
shared store, run the flow."""
import logging
import threading

from celery import Celery, Task, shared_task
from celery.signals import setup_logging, worker_process_init
from flask import current_app

from chatbot import logs, queueing
from chatbot.flow.context import encoding
from chatbot.flow.flow import create_chat_flow
from chatbot.store.models import utcnow

from chatbot import lifecycle  # noqa: F401  registers chatbot.archive_idle_sessions

log = logging.getLogger(__name__)
QUEUE = "ollama"
MAINTENANCE_QUEUE = "maintenance"


def celery_init_app(app):
    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.name, task_cls=FlaskTask)
    celery.config_from_object({
        "broker_url": app.config["REDIS_URL"],
        "task_ignore_result": True,
        # Housekeeping never waits behind (or blocks) the single-slot model queue; an exact
        # name wins over the glob.
        "task_routes": {"chatbot.archive_idle_sessions": {"queue": MAINTENANCE_QUEUE},
                        "chatbot.*": {"queue": QUEUE}},
        "beat_schedule": {"archive-idle-sessions": {"task": "chatbot.archive_idle_sessions",
                                                    "schedule": 15 * 60}},
        # One request at a time, and none held back in the worker while another runs.
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        "task_acks_late": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        # No task events by default (each costs a publish per task): Flower switches them on
        # in the workers while it runs (its --enable_events, on by default).
    })
    celery.set_default()
    app.extensions["celery"] = celery
    return celery


@setup_logging.connect
def _keep_our_logging(**_):
    """Connected, so Celery leaves logging as create_app configured it (JSON, request ids)."""


@worker_process_init.connect
def _warm_up(**_):
    encoding()  # load the tokenizer before the first request, not during it


class Heartbeat(threading.Thread):
    """Keeps the request marked running while this process lives: if the worker dies, the
    mark expires and the waiting web request answers with an error instead of hanging."""

    def __init__(self, line, request_id, queue):
        super().__init__(daemon=True)
        self.line, self.request_id, self.queue = line, request_id, queue
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(1.0):
            self.line.heartbeat(self.request_id, self.queue)


@shared_task(name="chatbot.run_request")
def run_request(job):
    """job: {request_id, session_id, kind, model, messages, upstream} (plain data, no ORM)."""
    relay, line = current_app.extensions["relay"], queueing.get()
    request_id, queue = job["request_id"], job.get("queue", QUEUE)
    emit = lambda event: relay.publish(request_id, event)  # noqa: E731
    logs.clear()
    logs.bind(request_id=request_id, session_id=job["session_id"], model=job["model"])
    cancelled, waited, waiting = line.start(request_id, queue)
    if cancelled:  # the client left while waiting: never reach the model
        log.info("cancelled while waiting; not sent upstream")
        emit({"t": "error", "status": 499, "error": "request cancelled"})
        line.finish(request_id, queue, "cancelled")
        return
    # New positions, the started event and the wait's metric share one round trip.
    pipe = relay.redis.pipeline(transaction=False)
    line.announce(queue, waiting, pipe=pipe)
    current_app.extensions["metrics"].observe("chatbot_queue_wait_seconds", waited, pipe=pipe,
                                              queue=queue)
    relay.publish(request_id, {"t": "started", "waited": waited}, pipe=pipe)
    pipe.execute()
    log.info("started after %.3f s in line, upstream %s", waited, job.get("host"))
    heartbeat = Heartbeat(line, request_id, queue)
    heartbeat.start()
    ext = current_app.extensions
    shared = {
        "job": job, "emit": emit, "started_at": utcnow(),
        "cancelled": line.cancel_probe(request_id),
        "upstream": ext["router"].upstream(job.get("host")),
        "windows": ext["windows"], "calibration": ext["calibration"], "metrics": ext["metrics"],
        "reserve": current_app.config["CONTEXT_REPLY_RESERVE"],
    }
    try:
        create_chat_flow().run(shared)
    except Exception as exc:  # the waiting client must hear of it rather than hang
        log.exception("request %s failed", request_id)
        emit({"t": "error", "status": 500, "error": f"internal error: {exc}"})
    finally:
        heartbeat.stopped.set()
        state = _state(shared)
        line.finish(request_id, queue, state)
        final = (shared.get("reply") or {}).get("final") or {}
        logs.bind(tokens=final.get("eval_count"))
        log.info("finished: %s", state)


def cancel_request(request_id):
    """Cancel wherever it is: a queued request leaves the line and its task is revoked; a
    running one sees the flag within a quarter second and closes the upstream connection."""
    info = queueing.get().cancel(request_id)
    if info.get("state") == "queued":
        current_app.extensions["celery"].control.revoke(request_id)
    return info


def _state(shared):
    reply = shared.get("reply") or {}
    return {"ok": "done"}.get(reply.get("status"), reply.get("status") or "failed")

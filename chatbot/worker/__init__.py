"""Celery in Flask's pattern (tasks run inside an app context), set up once for the web, which
sends tasks, and the workers, which run them."""
import gc
import json
import uuid

from celery import Celery, Task
from celery.signals import setup_logging, worker_init, worker_ready
from kombu import Connection

from chatbot.tokens import encoding

QUEUE = "ollama"
MAINTENANCE_QUEUE = "maintenance"
SWEEP_EVERY = 30  # seconds between sweeps of what no client will clear (see line.sweep)


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
                        "chatbot.sweep_line": {"queue": MAINTENANCE_QUEUE},
                        "chatbot.keep_models_loaded": {"queue": MAINTENANCE_QUEUE},
                        "chatbot.*": {"queue": QUEUE}},
        "beat_schedule": {
            "archive-idle-sessions": {"task": "chatbot.archive_idle_sessions",
                                      "schedule": 15 * 60},
            "sweep-line": {"task": "chatbot.sweep_line", "schedule": SWEEP_EVERY,
                           "options": {"expires": SWEEP_EVERY}},
        },
        # One request at a time, and none held back in the worker while another runs.
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        # Late acks: a request whose worker died is redelivered, and its claim (chatbot.line)
        # finds it no longer queued, so it is never run twice.
        "task_acks_late": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a restarted Redis is waited for
        "worker_hijack_root_logger": False,
        # No task events by default (each costs a publish per task): Flower switches them on
        # in the workers while it runs (its --enable_events, on by default).
    })
    if app.config["PINNED_MODELS"]:  # loaded again whenever their host drops them
        celery.conf.beat_schedule["keep-models-loaded"] = {
            "task": "chatbot.keep_models_loaded", "schedule": SWEEP_EVERY,
            "options": {"expires": SWEEP_EVERY}}
    celery.set_default()

    @worker_init.connect(weak=False)
    def _checkpoint_behind(**_):
        from chatbot.store import checkpoint_behind

        checkpoint_behind(app)

    @worker_ready.connect(weak=False)
    def _preload(sender, **_):
        """The maintenance worker, once started, has PRELOAD_MODELS and PINNED_MODELS loaded
        (as its first task, so that its start does not wait for them)."""
        if MAINTENANCE_QUEUE in (sender.app.amqp.queues.consume_from or ()) and \
                (app.config["PRELOAD_MODELS"] or app.config["PINNED_MODELS"]):
            sender.app.send_task("chatbot.keep_models_loaded", kwargs={"preload": True})

    app.extensions["celery"] = celery
    app.extensions["run_next_messages"] = RunNextMessages(celery)
    return celery


class RunNextMessages:
    """The broker message of `chatbot.run_next(queue)`, byte for byte as Celery's send_task
    writes it to Redis, so that the line's admit script pushes it in the round trip that
    admits the request: no second trip, and no request admitted without its task. Celery
    itself makes the message, once per queue, through kombu's in-memory transport (the same
    virtual channel Redis's transport is); each request then stamps in its own ids."""

    ID, TAG = "chatbot-task-id-placeholder", "chatbot-delivery-tag-placeholder"

    def __init__(self, celery):
        self.celery, self.templates = celery, {}

    def __call__(self, queue):
        """(the Redis list the queue's workers read, the message) for one new task. Its id is
        its own, not a request's: it runs whichever request heads the line then."""
        template = self.templates.get(queue) or self._make(queue)
        return queue, template.replace(self.ID, str(uuid.uuid4())).replace(self.TAG,
                                                                          str(uuid.uuid4()))

    def _make(self, queue):
        with Connection("memory://") as conn, conn.Producer() as producer:
            self.celery.send_task("chatbot.run_next", args=[queue], queue=queue,
                                  ignore_result=True, task_id=self.ID, producer=producer)
            message = producer.channel._get(queue)
        message["properties"]["delivery_tag"] = self.TAG
        # kombu's Redis transport keys a queue's default priority by its bare name.
        assert message["properties"]["priority"] == 0, message["properties"]
        self.templates[queue] = json.dumps(message)
        return self.templates[queue]


@setup_logging.connect
def _keep_our_logging(**_):
    """Connected, so Celery leaves logging as create_app configured it (JSON, request ids)."""


@worker_init.connect
def _warm_up(**_):
    encoding()  # load the tokenizer before the first request, not during it
    settle_heap()


def settle_heap():
    """Once a process has loaded what it keeps (app, tokenizer, Celery or gunicorn), move it
    out of the garbage collector's sight: the oldest generation's collections then walk only
    what requests allocate, instead of pausing a request for the whole heap now and then."""
    gc.collect()
    gc.freeze()

"""Celery in Flask's pattern (tasks run inside an app context), set up once for the web, which
sends tasks, and the workers, which run them."""
from celery import Celery, Task
from celery.signals import setup_logging, worker_init

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
    celery.set_default()
    app.extensions["celery"] = celery
    return celery


@setup_logging.connect
def _keep_our_logging(**_):
    """Connected, so Celery leaves logging as create_app configured it (JSON, request ids)."""


@worker_init.connect
def _warm_up(**_):
    encoding()  # load the tokenizer before the first request, not during it

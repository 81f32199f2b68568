"""The web server: gunicorn with gevent workers, so that thousands of clients waiting in line or
streaming cost a greenlet each, not a thread. One place for its settings, used by `chatbot up`
(`chatbot web`) and by docker/gunicorn.conf.py."""
import multiprocessing
import os
import sys


def settings(bind=None, workers=None, graceful=30):
    """gunicorn's settings; the environment's (CHATBOT_BIND, WEB_CONCURRENCY, ...) unless given."""
    return {
        "bind": bind or os.environ.get("CHATBOT_BIND", "0.0.0.0:8000"),
        "worker_class": "gevent",
        "workers": workers or int(os.environ.get("WEB_CONCURRENCY",
                                                 min(4, multiprocessing.cpu_count()))),
        # Clients one worker holds at once: every client waiting in line is one.
        "worker_connections": int(os.environ.get("WORKER_CONNECTIONS", 20000)),
        "backlog": 4096,
        # A stream lasts as long as the model talks; gevent workers heartbeat on their own.
        "timeout": int(os.environ.get("GUNICORN_TIMEOUT", 0)),
        "graceful_timeout": int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", graceful)),
        "keepalive": 5,
        "accesslog": None,  # chatbot logs each request itself, with its request id
        "errorlog": "-",
        "post_fork": _die_with_master,
        "post_worker_init": _ready,
    }


def _ready(worker):
    """The app is loaded and nothing is served yet: a server chatbot.ops.startup refuses stops
    here, saying why (gunicorn then stops: "Worker failed to boot"); else what the app keeps
    leaves the garbage collector's sight (settle_heap)."""
    from chatbot.ops import startup
    from chatbot.worker import settle_heap

    problem = startup.refusal(worker.wsgi, worker.cfg.bind)
    if problem:
        worker.log.error("chatbot cannot start: %s", problem)
        sys.exit(worker.WORKER_BOOT_ERROR)
    settle_heap()


def _die_with_master(server, worker):
    """A worker whose master was SIGKILLed goes at once (and frees the port for the next)."""
    from chatbot.ops.procs import die_with_parent

    die_with_parent(parent=server.pid)


def serve(host, port, workers=1):
    """Serve create_app() under gunicorn in this process (the master) until SIGTERM/SIGINT."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            options = settings(f"{host}:{port}", workers, graceful=5)  # Ctrl-C stops soon
            options["loglevel"] = "warning"  # no start-up chatter under `chatbot up`
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):  # in the worker, after gevent has patched it
            from chatbot import create_app

            return create_app()

    Server().run()
    return 0

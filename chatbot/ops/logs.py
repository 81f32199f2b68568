"""Logs: readable text lines in a terminal, JSON lines elsewhere (LOG_FORMAT=auto, the
default; LOG_FORMAT=json or text forces one), each carrying the request it belongs to. The
request's fields live in a context variable set by the web (per request) and by the worker (per
task), so every log line of both sides can be joined on request_id.

Each process decides for itself, on its own log stream: the children of `chatbot up` inherit
its terminal, so they all write text there, and JSON when their output goes to a file or a
pipe (Docker, systemd, a log shipper)."""
import contextvars
import json
import logging
import sys
import uuid
from datetime import datetime, timezone

FIELDS = ("request_id", "task_id", "key", "session_id", "model", "queue_position", "tokens",
          "error_id")
_context = contextvars.ContextVar("chatbot_log_context", default={})


def bind(**fields):
    """Add fields to the current request's log context."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def clear():
    _context.set({})


def incident(logger, what):
    """Log the exception being handled with a fresh error id, and return the short, generic
    text a client gets instead of its details (SQL, parameters, hosts stay in the log)."""
    error_id = uuid.uuid4().hex[:12]
    logger.error(what, exc_info=True, extra={"error_id": error_id})
    return f"internal error (error id {error_id})"


class ContextFilter(logging.Filter):
    def filter(self, record):
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        # Celery's own task lines ("received", "succeeded") name the task: a task runs the
        # head of the line, and its lines in between say which request that was.
        if not hasattr(record, "task_id") and isinstance(record.args, dict) and "id" in record.args:
            record.task_id = record.args["id"]
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: getattr(record, k) for k in FIELDS if getattr(record, k, None) is not None})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """One line for a person: `18:09:01 INFO  worker  started after 0.001 s ... [request_id=...]`
    (local time, level, a short logger name, the message, the request's fields)."""

    LEVELS = {"WARNING": "WARN", "CRITICAL": "CRIT"}  # five columns at most

    def __init__(self):
        super().__init__(datefmt="%H:%M:%S")

    @staticmethod
    def short(name):
        """chatbot.api.turns -> api.turns, chatbot.worker.tasks -> worker,
        celery.app.trace -> celery."""
        if name.startswith("chatbot."):
            name = name[len("chatbot."):]
            return "worker" if name == "worker.tasks" else name
        return name.split(".", 1)[0]

    def format(self, record):
        level = self.LEVELS.get(record.levelname, record.levelname)
        line = (f"{self.formatTime(record, self.datefmt)} {level:<5} {self.short(record.name):<7} "
                f"{record.getMessage()}")
        extra = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS
                         if getattr(record, k, None) is not None)
        if extra:
            line += f" [{extra}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# Routine chatter of libraries, shown only with LOG_LEVEL=DEBUG: Alembic's plugin and revision
# lines on every start ("Context impl SQLiteImpl.", "Will assume non-transactional DDL.",
# "Running upgrade ..."), and celery beat's start and its "Sending due task" every 30 s.
QUIET = ("alembic", "celery.beat")
# Celery's "Task ... received" and "... succeeded" lines, which say again, per request, what
# the run_next task's own lines say (with its task_id, and the request it ran).
TASK_LINES = ("celery.worker.strategy", "celery.app.trace")


def _not_run_next(record):
    """False for Celery's routine line about a run_next task (its failures still show)."""
    context = record.args if isinstance(record.args, dict) else {}
    return record.levelno > logging.INFO or context.get("name") != "chatbot.run_next"


def resolve(fmt, stream):
    """The format a process writes to `stream` in: json or text as asked; for auto (or
    anything else), text when the stream is a terminal and JSON otherwise."""
    fmt = (fmt or "auto").strip().lower()
    if fmt in ("json", "text"):
        return fmt
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return "json"


def configure(level="INFO", fmt="auto", stream=None):
    """Route every logger (ours, Flask's, Celery's, werkzeug's) through one formatted handler,
    text or JSON as `resolve` decides for that stream. Returns the format chosen."""
    stream = stream or sys.stderr
    fmt = resolve(fmt, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.chatbot = True
    root = logging.getLogger()
    # Replace only our own earlier handler: a test runner's capture handler stays.
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "chatbot", False)] + [handler]
    root.setLevel(level.upper())
    quiet = logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    for name in QUIET:
        logging.getLogger(name).setLevel(quiet)
    for name in TASK_LINES:
        logger = logging.getLogger(name)
        if quiet and _not_run_next not in logger.filters:
            logger.addFilter(_not_run_next)
        elif not quiet:
            logger.removeFilter(_not_run_next)
    return fmt


def init_app(app):
    configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])

"""Logs: JSON lines by default (LOG_FORMAT=text for plain), each carrying the request it
belongs to. The request's fields live in a context variable set by the web (per request) and
by the worker (per task), so every log line of both sides can be joined on request_id."""
import contextvars
import json
import logging
import sys
import uuid
from datetime import datetime, timezone

FIELDS = ("request_id", "key", "session_id", "model", "queue_position", "tokens", "error_id")
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
        # Celery's own task lines ("received", "succeeded") name the task id, which is ours.
        if not hasattr(record, "request_id") and isinstance(record.args, dict) and "id" in record.args:
            record.request_id = record.args["id"]
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
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record):
        extra = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS
                         if getattr(record, k, None) is not None)
        return super().format(record) + (f" [{extra}]" if extra else "")


def configure(level="INFO", fmt="json", stream=None):
    """Route every logger (ours, Flask's, Celery's, werkzeug's) through one formatted handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.chatbot = True
    root = logging.getLogger()
    # Replace only our own earlier handler: a test runner's capture handler stays.
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "chatbot", False)] + [handler]
    root.setLevel(level.upper())


def init_app(app):
    configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])

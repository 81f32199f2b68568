"""What a request's client and its SSE listeners hear, in one place.

Relay events, appended to the request's stream in order (chatbot.line.relay reads them):
{"t": "started", "waited": s} · {"t": "chunk", "raw": <upstream NDJSON line>, "n": k} ·
{"t": "done", "d": <final chunk>, "reply": {...}, "marks": {...}, "waited": s} ·
{"t": "error", "status": int, "error": str}. Every request ends with exactly one of the last
two (FINAL).

SSE notices, in flask-sse's shape (GET /api/events): `queued` {position} while it waits,
`started`, `token` (a chunk, its id its number, for Last-Event-ID), `done`, `error`, and
a running request's steps (`summarizing`, `summarized`); on the queue channel, `depth`."""
import functools
import json

from flask_sse import Message

from chatbot.upstream import REPLY_FIELDS

STARTED, CHUNK, DONE, ERROR = "started", "chunk", "done", "error"
FINAL = (DONE, ERROR)
QUEUE_CHANNEL = "queue"  # the SSE channel of the line's depth


def error_event(status, error):
    return {"t": ERROR, "status": status, "error": error}


def chunk(raw):
    return {"t": CHUNK, "raw": raw}


CANCELLED = error_event(499, "request cancelled")
CLIENT_GONE = error_event(499, "client disconnected")
LOST = error_event(500, "the worker running this request died")
VANISHED = error_event(503, "the request was lost: the queue's store restarted; please retry")
UNAVAILABLE = error_event(503, "the queue's store does not answer; please retry")
ENDED = error_event(500, "the request ended, but its reply was lost on the way")
NO_JOB = error_event(500, "the request was lost")
NO_REPLY = error_event(500, "the request ended without a reply")


def expired(queue_timeout):
    """The one text of a request that waited too long in line (the scripts decide when)."""
    return error_event(503, f"the request waited over {queue_timeout:g} s in line without "
                            "starting (QUEUE_TIMEOUT_SECONDS); please retry")


def overdue(max_seconds):
    """The one text of a request stopped for running too long."""
    return error_event(503, f"the reply ran past {max_seconds:g} s (MAX_REQUEST_SECONDS) and was "
                            "stopped; what it had generated is kept in the session")


# Why a worker stops a running request (the heartbeat script's answer).
STOP_REASONS = {1: "cancelled", 2: "the client is gone", 3: "the request was ended elsewhere"}


def outcome(reply):
    """(state, final event) of a flow's reply."""
    if reply.get("error"):
        return "failed", error_event(**reply["error"])
    if reply.get("status") == "cancelled":
        return "cancelled", CANCELLED
    whole = {k: reply.get(k) for k in REPLY_FIELDS}
    return "done", {"t": DONE, "d": reply["final"], "reply": whole, "marks": reply.get("marks"),
                    "waited": reply.get("waited", 0.0)}


def notice(event):
    """The SSE notice that goes with a relay event: (type, data[, id]). A chunk's id is its
    number, which a client that reconnects sends back as Last-Event-ID."""
    kind = event["t"]
    if kind == CHUNK:
        return "token", event["raw"], event.get("n")
    if kind == DONE:
        return DONE, event["d"]
    if kind == ERROR:
        return ERROR, {"error": event["error"], "status": event["status"]}
    return kind, {k: v for k, v in event.items() if k != "t"}


def sse_message(type_, data, id=None):
    return json.dumps(Message(data, type=type_, id=id).to_dict())


def sse_notice(event):
    return sse_message(*notice(event))


def sse_channel(owner, request_id):
    """A request's SSE channel: its id, under its owner's name while keys are on, so that
    another key subscribing to the same id hears nothing of it."""
    return request_id if owner is None else f"{owner}/{request_id}"


def _sse_template(type_, data, number_field):
    """A flask-sse message with `number_field` left as %d for a script to fill in."""
    message = sse_message(type_, {**data, number_field: 999_999_999})
    return message.replace("%", "%%").replace("999999999", "%d")


POSITION = _sse_template("queued", {"position": 0}, "position")


@functools.lru_cache(maxsize=256)
def depth_template(queue):
    return _sse_template("depth", {"queue": queue, "waiting": 0}, "waiting")

"""A chat or generate request's life on the web side: queue it, then answer from its events."""
import uuid

from flask import Response, current_app

from chatbot import queueing
from chatbot.api import ApiError
from chatbot.tasks import QUEUE, run_request

BUSY = "server busy, please try again.  maximum pending requests exceeded"


def submit(kind, model, messages, upstream_body, session_id):
    """Queue a turn. `messages` are what the session gains; `upstream_body` the rest of what
    is sent upstream (chat's context is added by the flow)."""
    request_id = str(uuid.uuid4())
    try:
        queueing.get().admit(request_id, QUEUE)
    except queueing.QueueFull:
        raise ApiError(503, BUSY)
    job = {"request_id": request_id, "session_id": session_id, "kind": kind, "model": model,
           "messages": messages, "upstream": {**upstream_body, "model": model}}
    run_request.apply_async(args=[job], task_id=request_id, queue=QUEUE)
    return request_id


def respond(request_id, session_id, stream, wire):
    """Wait for the first reply event, so that an upstream error still sets the HTTP status,
    then stream (or answer once with the whole reply)."""
    events = current_app.extensions["relay"].events(request_id)
    headers = {"X-Session-ID": session_id, "X-Request-ID": request_id}
    first = _first_reply_event(events, request_id)
    if first["t"] == "error":
        resp = wire.failure(first["status"], first["error"])
    elif not stream:
        last = first if first["t"] == "done" else _last(events)
        resp = wire.failure(last["status"], last["error"]) if last["t"] == "error" else wire.whole(last)
    else:
        resp = Response(_lines(first, events, request_id, wire), mimetype=wire.mimetype)
    resp.headers.update(headers)
    return resp


def _first_reply_event(events, request_id):
    try:
        for event in events:
            if event["t"] != "started":
                return event
    except BaseException:
        queueing.get().cancel(request_id)
        raise


def _last(events):
    for event in events:
        if event["t"] in ("done", "error"):
            return event


def _lines(first, events, request_id, wire):
    finished = False
    try:
        for event in _chain(first, events):
            if event["t"] == "chunk":
                yield wire.chunk(event["raw"])
            elif event["t"] == "done":
                finished = True
                yield wire.final(event)
            elif event["t"] == "error":  # after the first byte: one error line, status stays 200
                finished = True
                yield wire.error_line(event["error"])
    finally:
        if not finished:  # the client went away mid-stream: stop the generation
            queueing.get().cancel(request_id)


def _chain(first, events):
    yield first
    if first["t"] not in ("done", "error"):
        yield from events

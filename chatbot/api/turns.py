"""A chat or generate request's life on the web side: queue it, then answer from its events."""
import uuid

from flask import Response, current_app

from chatbot import queueing
from chatbot.api import ApiError, error_response
from chatbot.api.shapes import dumps
from chatbot.tasks import QUEUE, run_request

BUSY = "server busy, please try again.  maximum pending requests exceeded"
# Upstream body fields a chat carries through; the rest of a request is ours or generate's.
CHAT_FIELDS = ("options", "format", "keep_alive", "think", "tools")


def submit(kind, model, messages, body, session_id):
    request_id = str(uuid.uuid4())
    try:
        queueing.get().admit(request_id, QUEUE)
    except queueing.QueueFull:
        raise ApiError(503, BUSY)
    job = {"request_id": request_id, "session_id": session_id, "kind": kind, "model": model,
           "messages": messages, "options": {k: body[k] for k in CHAT_FIELDS if k in body}}
    run_request.apply_async(args=[job], task_id=request_id, queue=QUEUE)
    return request_id


def respond(request_id, session_id, stream, chunk_shape, final_shape):
    """Wait for the first reply event, so that an upstream error still sets the HTTP status,
    then stream NDJSON (or answer once with the whole reply)."""
    events = current_app.extensions["relay"].events(request_id)
    headers = {"X-Session-ID": session_id, "X-Request-ID": request_id}
    first = _first_reply_event(events, request_id)
    if first["t"] == "error":
        return error_response(first["status"], first["error"], headers)
    if not stream:
        rest = first if first["t"] == "done" else _last(events)
        if rest["t"] == "error":
            return error_response(rest["status"], rest["error"], headers)
        body = dumps(final_shape(rest["d"], rest["reply"], session_id, True))
        return Response(body, mimetype="application/json", headers=headers)
    return Response(_ndjson(first, events, request_id, session_id, chunk_shape, final_shape),
                    mimetype="application/x-ndjson", headers=headers)


def _first_reply_event(events, request_id):
    try:
        for event in events:
            if event["t"] != "started":
                return event
    except GeneratorExit:
        raise
    except BaseException:
        queueing.get().cancel(request_id)
        raise


def _last(events):
    for event in events:
        if event["t"] in ("done", "error"):
            return event


def _ndjson(first, events, request_id, session_id, chunk_shape, final_shape):
    finished = False
    try:
        for event in _chain(first, events):
            if event["t"] == "chunk":
                yield (event["raw"] if chunk_shape is None else dumps(chunk_shape(event["raw"]))) + "\n"
            elif event["t"] == "done":
                finished = True
                yield dumps(final_shape(event["d"], event["reply"], session_id, False)) + "\n"
            elif event["t"] == "error":  # after the first byte: one error line, status stays 200
                finished = True
                yield dumps({"error": event["error"]}) + "\n"
    finally:
        if not finished:  # the client went away mid-stream: stop the generation
            queueing.get().cancel(request_id)


def _chain(first, events):
    yield first
    if first["t"] not in ("done", "error"):
        yield from events

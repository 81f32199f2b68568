"""OpenAI's Responses API (/v1/responses) on the server's sessions and line.

A request is converted as Ollama converts it (openai/responses.go FromResponsesRequest) and
queued as a chat turn like any other. Unlike Ollama's, it keeps state: a response's turn is
stored in a session's thread, and `previous_response_id` continues that conversation while
the client sends only what is new (a response before the thread's newest, or another model,
starts a branch at it). A response is stored (`store`, on by default) once it ends, read back
by GET and removed by DELETE; `background: true` answers at once and the response runs on,
read by polling or by streaming it (`?stream=true&starting_after=N`), cancelled by POST
.../cancel. Another key's response is a 404, as its session is."""
import json
import logging
import threading
import time
import uuid

from flask import Blueprint, Response, current_app, g, request

from chatbot import line as lines
from chatbot.api import (auth, openai_wire, queue as requests_api,
                         responses_request as request_in, turns, validate)
from chatbot.api.errors import ApiError
from chatbot.api.responses_wire import ResponsesWire
from chatbot.api.wire import dumps
from chatbot.line import admission, sweep
from chatbot.line.events import CHUNK, DONE, ERROR
from chatbot.ops import logs
from chatbot.redis_keys import stream_key
from chatbot.store import responses as stored
from chatbot.upstream import UpstreamError

bp = Blueprint("responses", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)
# The line's states as a response's status, for one not kept (yet): an ended one is being kept,
# or was not to be (store false), or ended before its turn stored anything.
STATES = {"queued": "queued", "running": "in_progress", "done": "in_progress",
          "cancelled": "cancelled", "expired": "failed", "failed": "failed", "lost": "failed"}


@bp.errorhandler(ApiError)
@bp.errorhandler(UpstreamError)
def _error(exc):
    return openai_wire.failure(exc.status, exc.error)


@bp.post("/responses")
def create():
    body = validate.json_body("ResponsesRequest")
    model = validate.model_name(body)
    stream = validate.stream_flag(body, default=False)
    background = request_in.flag(body, "background", False)
    store = request_in.flag(body, "store", True)
    if background and not store:
        raise ApiError(400, "background responses must be stored: send store true")
    previous = body.get("previous_response_id")
    session_id, before = _conversation(body, previous, model)
    messages, upstream_body = request_in.chat(body, session_id, model, before)
    validate.chat_messages({"messages": messages})
    validate.options(upstream_body, "ChatRequest")
    validate.turn_fields(upstream_body, "ChatRequest")
    validate.format_(upstream_body.get("format"))
    # A response is new each time: its id is its request's, made here.
    g.request_id = str(uuid.uuid4())
    logs.bind(request_id=g.request_id)
    wire = ResponsesWire(model, "resp_" + g.request_id,
                         request_in.echo(body, previous, session_id, background, store))
    if store:
        wire.on_end = _keeper(g.request_id, session_id, auth.key_name())
    if background:
        return _background(model, messages, upstream_body, session_id, wire, before is not None)
    return turns.turn("chat", model, messages, upstream_body, session_id, wire, stream,
                      validate.resumable(body), branch=before is not None, join=False)


@bp.get("/responses/<response_id>")
def retrieve(response_id):
    if request.args.get("stream", "").lower() == "true":
        return _stream_again(response_id, _count(request.args.get("starting_after")))
    row = _row(response_id)
    if row is not None:
        return _json(row.body)
    info = _in_line(response_id)
    if info["state"] == "done" and not info.get("wire"):  # ended, and not to be kept
        raise _not_found(response_id)
    return _json(_wire_of(info, response_id).response(STATES.get(info["state"], "failed")))


@bp.delete("/responses/<response_id>")
def delete(response_id):
    row = _row(response_id)
    if row is None:
        if _running(_in_line(response_id, missing_ok=True)):
            raise ApiError(400, f"Response with id '{response_id}' is still in progress: cancel "
                                f"it first (POST /v1/responses/{response_id}/cancel)")
        raise _not_found(response_id)
    stored.forget(row)
    return _json({"id": response_id, "object": "response.deleted", "deleted": True})


@bp.post("/responses/<response_id>/cancel")
def cancel(response_id):
    info = _in_line(response_id, missing_ok=True)
    if not _running(info):
        if _row(response_id) is not None or info:
            raise ApiError(400, "Cannot cancel a response that has ended.")
        raise _not_found(response_id)
    admission.cancel(lines.get(), _request_id(response_id))
    return _json(_wire_of(info, response_id).response("cancelled"))


# Where a response's turn goes


def _conversation(body, previous, model):
    """(session id, the messages to send before the new input or None): the conversation the
    response continues, by `previous_response_id`, else by session (`conversation`, the
    X-Session-ID header), else a new one."""
    named = body.get("conversation")
    if isinstance(named, dict):
        named = named.get("id")
    if named is not None and not isinstance(named, str):
        raise ApiError(400, "invalid conversation: must be a session id")
    if previous is None:
        return validate.session_id({"session_id": named} if named else {}), None
    if not isinstance(previous, str):
        raise ApiError(400, "invalid previous_response_id: must be a string")
    row = _row(previous)
    if row is not None:
        return row.session_id, stored.continuation(row, model)
    # Not ended yet: its turn goes after it in its thread (one turn at a time per thread).
    return _in_line(previous, what="Previous response")["session_id"], None


# Keeping and finding responses


def _keeper(request_id, session_id, owner):
    """What saves the response once it has ended, whoever sees it end."""
    app = current_app._get_current_object()

    def keep(body):
        try:
            with app.app_context():
                stored.save(body, request_id, session_id, owner)
        except Exception:  # the client still gets its response; it is only not kept
            log.exception("could not store response %s", body["id"])

    return keep


def _background(model, messages, upstream_body, session_id, wire, branch):
    """Queue it as a resumable request (a client may stream it later) and follow it here, in
    a thread of this process (whose lease keeps it wanted), until it ends and is kept."""
    request_id, queue = turns.submit("chat", model, messages, upstream_body, session_id,
                                     (wire, True), resumable=True, branch=branch)
    app = current_app._get_current_object()
    threading.Thread(target=_follow, args=(app, request_id, queue, wire), daemon=True,
                     name=f"response-{request_id}").start()
    resp = _json(wire.response("queued"))
    resp.headers.update({"X-Session-ID": session_id, "X-Request-ID": request_id})
    return resp


def _follow(app, request_id, queue, wire):
    """Read a background response's events as its client would, to its end."""
    with app.app_context():
        relay, line = app.extensions["relay"], lines.get()
        hub = relay.hub()
        waiter = hub.watch(request_id, again=True)
        hub.read([request_id])  # what is there already
        check = lambda started: sweep.verdict(line, request_id, queue)  # noqa: E731
        try:
            for event in relay.events(request_id, check=check, every=turns.LOOK_EVERY,
                                      waiter=waiter):
                if event["t"] == CHUNK:
                    wire.chunk(event["raw"])
                elif event["t"] == DONE:
                    wire.final(event)
                elif event["t"] == ERROR:
                    wire.failed(event["error"], "cancelled" if event["status"] == 499 else "failed")
        except Exception:
            log.exception("lost track of background response %s", request_id)


def _request_id(response_id):
    return response_id.removeprefix("resp_")


def _row(response_id):
    """The kept response, if the asking key may see it: else None, or a 404 once deleted
    (its id is not found again, even while the line still remembers its request)."""
    row = stored.get(response_id)
    if row is None or not auth.owns(row.owner):
        return None
    if row.status == stored.DELETED:
        raise _not_found(response_id)
    return row


def _in_line(response_id, missing_ok=False, what="Response"):
    """The line's record of a response not yet kept (waiting, running, or just ended)."""
    info = lines.get().info(_request_id(response_id)) if response_id.startswith("resp_") else {}
    if info and auth.owns(info.get("owner") or None):
        return info
    if missing_ok:
        return None
    raise _not_found(response_id, what)


def _running(info):
    """Whether the line's record is of a response still waiting or running."""
    return bool(info) and info.get("state") in ("queued", "running")


def _not_found(response_id, what="Response"):
    return ApiError(404, f"{what} with id '{response_id}' not found.")


def _wire_of(info, response_id, starting_after=-1):
    """The response's wire as its request made it (kept by a resumable one), else a plain one."""
    if info.get("wire"):
        name, args, _stream = json.loads(info["wire"])
        if name == ResponsesWire.__name__:
            return ResponsesWire(*args, starting_after=starting_after)
    return ResponsesWire(info.get("model", ""), response_id, {"created_at": int(time.time())},
                         starting_after)


def _stream_again(response_id, starting_after):
    """A response's events again, after `starting_after`: live from its request's stream while
    that is kept, else told again from the stored response."""
    info = _in_line(response_id, missing_ok=True)
    rid = _request_id(response_id)
    if info and info.get("wire") and current_app.extensions["redis"].exists(stream_key(rid)):
        wire = _wire_of(info, response_id, starting_after)
        return requests_api.answer_again(rid, info, 0, wire)
    row = _row(response_id)
    if row is None:
        if info:
            raise ApiError(400, f"Response with id '{response_id}' was not created with "
                                "background true: it cannot be streamed again")
        raise _not_found(response_id)
    return Response(ResponsesWire.told_again(row.body, starting_after),
                    mimetype="text/event-stream")


def _count(text):
    if text is None or text == "":
        return -1
    if not text.isdigit() or len(text) > 9:
        raise ApiError(400, f"invalid starting_after {text!r}: must be a sequence number")
    return int(text)


def _json(obj):
    return Response(dumps(obj) + "\n", mimetype="application/json")

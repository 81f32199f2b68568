"""Where requests stand: GET /api/queue, GET/DELETE /api/queue/<id>, the SSE streams
(GET /api/events?channel=<request id> or channel=queue), and a resumable request's reply for
a client that comes back (GET /api/requests/<id>/stream?after=N)."""
import json
import logging
import queue as queue_module
import time

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from flask_sse import Message

from chatbot import line as lines
from chatbot.api import (anthropic_wire, auth, notices, openai_wire, quota, responses_wire,
                         turns, wire as ollama_wire)
from chatbot.api.errors import ApiError
from chatbot.line import admission, eta, events as ev
from chatbot.ops import logs
from chatbot.redis_keys import stream_key
from chatbot.upstream import routing

bp = Blueprint("queue", __name__)
log = logging.getLogger(__name__)
KEEPALIVE_SECONDS = 3
# The wires a client that comes back may be answered on, by name (their recipe()).
WIRES = {cls.__name__: cls for cls in (ollama_wire.OllamaChat, ollama_wire.OllamaGenerate,
                                       openai_wire.OpenAIChat, openai_wire.OpenAICompletion,
                                       responses_wire.ResponsesWire,
                                       anthropic_wire.AnthropicMessages)}
RETRY_MS = 1000  # how soon an EventSource reconnects


@bp.get("/api/queue")
def overview():
    """Every queue; another key's entries show only their place (and how long)."""
    line = lines.get()
    return jsonify(queues=[_visible(line.snapshot(q)) for q in routing.get().queues.values()])


def _visible(snapshot):
    if auth.scope() is auth.ALL:
        return snapshot
    hidden = ("request_id", "session_id", "model")
    mine = lambda entry: auth.owns(entry.pop("owner", None))  # noqa: E731
    if snapshot["running"] and not mine(snapshot["running"]):
        snapshot["running"] = {k: v for k, v in snapshot["running"].items() if k not in hidden}
    snapshot["waiting"] = [entry if mine(entry) else
                           {k: v for k, v in entry.items() if k not in hidden}
                           for entry in snapshot["waiting"]]
    return snapshot


@bp.get("/api/queue/<request_id>")
def one(request_id):
    info = _known(request_id)
    estimate = eta.estimate(lines.get(), request_id, info["queue"]) or {}
    return jsonify(request_id=request_id, position=estimate.get("position"),
                   start_in=estimate.get("start_in"), finish_in=estimate.get("finish_in"),
                   **info)


@bp.delete("/api/queue/<request_id>")
def cancel(request_id):
    _known(request_id)
    was = admission.cancel(lines.get(), request_id)
    return jsonify(request_id=request_id, state="cancelled", was=was)


@bp.get("/api/requests/<request_id>/stream")
def resume(request_id):
    """A resumable request's reply, as its first call answered it, from the chunk after the
    first `after` (0: all of it so far), then live to the end."""
    info = _owned(request_id)
    if not info.get("wire"):
        raise ApiError(400, f"request '{request_id}' is not resumable: send it with "
                            "'X-Resumable: true' or \"resumable\": true")
    if not current_app.extensions["redis"].exists(stream_key(request_id)):
        raise ApiError(404, f"request '{request_id}' has no reply left to resume")
    return answer_again(request_id, info, _count(request.args.get("after", "0"), "after"))


def answer_again(request_id, info, after, wire=None):
    """Answer a client that came back to a resumable request: every chunk after the first
    `after`, then live to the end, on the wire of its first call (or `wire`). From now on the
    request's events ring this process, and it is no longer given up."""
    hub = current_app.extensions["relay"].hub()
    waiter = hub.watch(request_id, again=True)  # before taking over: no ring comes too early
    try:
        admission.resume(lines.get(), request_id, hub.lease)
        hub.read([request_id])  # what is there already
    except redis.RedisError:
        hub.unwatch(request_id, waiter)
        raise ApiError(503, ev.UNAVAILABLE["error"],
                       {"Retry-After": str(turns.RETRY_AFTER_SECONDS)})
    name, args, stream = json.loads(info["wire"])
    wire = wire or WIRES[name](*args)
    logs.bind(request_id=request_id, session_id=info["session_id"], model=info["model"])
    log.info("client came back after %d chunk(s)", after)
    return turns.respond(request_id, info["queue"], info["session_id"], stream, wire,
                         resumable=True, after=after, waiter=waiter)


def _count(text, name):
    if not text.isdigit() or len(text) > 9:
        raise ApiError(400, f"invalid {name} {text!r}: must be a whole number of chunks")
    return int(text)


def _owned(request_id):
    """A request's record, if the asking key may see it; else a 404."""
    info = lines.get().info(request_id)
    if not info or not auth.owns(info.get("owner") or None):
        raise ApiError(404, f"request '{request_id}' not found")
    return info


def _known(request_id):
    """What a client may see of its request."""
    return {k: v for k, v in _owned(request_id).items()
            if k not in ("owner", "lease", "channel", "cancel", "wire")}


@bp.get("/api/events")
def events():
    """flask-sse's messages through the process's one subscription (chatbot.api.notices),
    subscribed before the first byte goes out (so a client that has the headers misses
    nothing), with a comment every few seconds, which keeps proxies from closing the stream and
    lets us notice a client that left. A stream lasts STREAM_MAX_SECONDS at most; the client
    (EventSource does it by itself) comes back with Last-Event-ID and loses nothing: a
    request's tokens after it are read back from its reply stream, and its place is said
    again. An asker holds MAX_STREAMS_PER_KEY streams at most (429 past them)."""
    name = request.args.get("channel") or ev.QUEUE_CHANNEL
    channel = _channel(name)
    # A client that reconnects says the last token it has (EventSource sends it by itself).
    raw_last = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    last_id = None if raw_last is None else _count(raw_last.strip(), "Last-Event-ID")
    streams, who = current_app.extensions["notices"], quota.asker()
    stream_id = streams.open(who)
    if stream_id is None:
        raise ApiError(429, f"too many event streams: {streams.max_per_asker} per key "
                            "(MAX_STREAMS_PER_KEY)", {"Retry-After": str(KEEPALIVE_SECONDS)})
    try:
        listener = streams.hub().listen(channel)
    except BaseException:
        streams.close(who, stream_id)
        raise
    line, about_a_request = lines.get(), name != ev.QUEUE_CHANNEL
    client = current_app.extensions["redis"]  # the stream runs outside the app context
    ends_at = time.monotonic() + streams.max_seconds

    def stream():
        sent, ended = last_id, False  # the newest token it has; the end sent
        if about_a_request:
            admission.listen(line, name, 1)  # its position is announced while someone listens
        try:
            yield f"retry: {RETRY_MS}\n: subscribed\n\n"
            if about_a_request:
                if last_id is not None:  # subscribed first: nothing falls between
                    for message in _since(client, name, last_id):
                        sent = max(sent, message.id or 0)
                        ended = ended or message.type in ev.FINAL
                        yield str(message)
                place = _place(line, name)
                if place and not ended:
                    yield str(Message(_estimated(line, name, {"position": place}),
                                      type="queued"))
            while time.monotonic() < ends_at:
                try:
                    data = listener.inbox.get(timeout=KEEPALIVE_SECONDS)
                except queue_module.Empty:
                    yield ": keep-alive\n\n"
                    continue
                fields = json.loads(data)
                if about_a_request and fields.get("type") == "queued":
                    fields["data"] = _estimated(line, name, fields.get("data") or {})
                if not _sent_already(fields, sent, ended):
                    yield str(Message(**fields))
            yield ": this stream has lasted STREAM_MAX_SECONDS; reconnect with Last-Event-ID\n\n"
        finally:
            streams.hub().leave(listener)
            streams.close(who, stream_id)
            if about_a_request:
                try:
                    admission.listen(line, name, -1)
                except redis.RedisError:
                    pass  # gone with Redis

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


def _place(line, request_id):
    """A request's place in line, if it waits (None if Redis does not answer)."""
    try:
        info = line.info(request_id)
        return line.position(request_id, info["queue"]) if info.get("state") == "queued" else None
    except (redis.RedisError, KeyError):
        return None


def _estimated(line, request_id, data):
    """A `queued` notice's data with the request's estimate (chatbot.line.eta) added."""
    try:
        info = line.info(request_id)
        estimate = eta.estimate(line, request_id, info["queue"], fresh=False) or {}
    except (redis.RedisError, KeyError):
        estimate = {}
    return {**data, "start_in": estimate.get("start_in"), "finish_in": estimate.get("finish_in")}


def _sent_already(fields, sent, ended):
    """A notice published while the stream was being read, and so sent from it already."""
    if fields.get("type") == "token":
        return sent is not None and (fields.get("id") or 0) <= sent
    return ended and fields.get("type") in ev.FINAL


def _since(client, request_id, last_id):
    """A request's notices after its token number `last_id`, read from its relay stream."""
    try:
        entries = client.xrange(stream_key(request_id))
    except redis.RedisError:
        entries = ()
    for _, fields in entries:
        event = json.loads(fields[b"e"])
        if event["t"] in ev.FINAL or (event["t"] == ev.CHUNK and event.get("n", 0) > last_id):
            type_, data, *id_ = ev.notice(event)
            yield Message(data, type=type_, id=(id_ or [None])[0])


def _channel(name):
    """The Redis channel behind `?channel=`: the queue's, or a request's. While keys are on, a
    request's channel carries its owner's name, and another key's request is 404; an id not
    sent yet (subscribe first, then send) is the asking key's own."""
    if name == ev.QUEUE_CHANNEL:
        return name
    info = lines.get().info(name)
    if info:
        if not auth.owns(info.get("owner") or None):
            raise ApiError(404, f"request '{name}' not found")
        return info.get("channel") or name
    return ev.sse_channel(auth.key_name(), name)


def init_app(app):
    app.register_blueprint(bp)
    notices.init_app(app)

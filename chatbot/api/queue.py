"""Where requests stand: GET /api/queue, GET/DELETE /api/queue/<id>, and the SSE streams
(GET /api/events?channel=<request id> or channel=queue)."""
import json
import logging
import time

import redis
from flask import Blueprint, Response, jsonify, request
from flask_sse import Message, sse

from chatbot import line as lines, routing
from chatbot.api import ApiError, auth

bp = Blueprint("queue", __name__)
log = logging.getLogger(__name__)
KEEPALIVE_SECONDS = 3


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
    position = lines.get().position(request_id, info["queue"])
    return jsonify(request_id=request_id, position=position, **info)


@bp.delete("/api/queue/<request_id>")
def cancel(request_id):
    _known(request_id)
    was = lines.get().cancel(request_id)
    return jsonify(request_id=request_id, state="cancelled", was=was)


def _known(request_id):
    info = lines.get().info(request_id)
    if not info or not auth.owns(info.pop("owner", "") or None):
        raise ApiError(404, f"request '{request_id}' not found")
    return {k: v for k, v in info.items() if k not in ("lease", "channel", "cancel")}


@bp.get("/api/events")
def events():
    """flask-sse's messages, but subscribed before the first byte goes out (so a client that
    has the headers misses nothing) and with a comment every few seconds, which keeps proxies
    from closing the stream and lets us notice a client that left. After a Redis restart it
    subscribes again (what was published meanwhile is lost, as with any pub/sub)."""
    name = request.args.get("channel") or lines.QUEUE_CHANNEL
    channel = _channel(name)
    pubsub = sse.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    line, about_a_request = lines.get(), name != lines.QUEUE_CHANNEL

    def stream():
        listener = pubsub
        if about_a_request:
            line.listen(name, 1)  # its position is announced while someone listens
        try:
            yield ": subscribed\n\n"
            while True:
                try:
                    message = listener.get_message(timeout=KEEPALIVE_SECONDS)
                except redis.RedisError:
                    log.warning("SSE: redis went away; subscribing again")
                    listener.close()
                    listener = yield from _resubscribe(channel)
                    continue
                if message is None:
                    yield ": keep-alive\n\n"
                elif message["type"] == "message":
                    yield str(Message(**json.loads(message["data"])))
        finally:
            listener.close()
            if about_a_request:
                try:
                    line.listen(name, -1)
                except redis.RedisError:
                    pass  # gone with Redis

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


def _channel(name):
    """The Redis channel behind `?channel=`: the queue's, or a request's. While keys are on, a
    request's channel carries its owner's name, and another key's request is 404; an id not
    sent yet (subscribe first, then send) is the asking key's own."""
    if name == lines.QUEUE_CHANNEL:
        return name
    info = lines.get().info(name)
    if info:
        if not auth.owns(info.get("owner") or None):
            raise ApiError(404, f"request '{name}' not found")
        return info.get("channel") or name
    return lines.sse_channel(auth.key_name(), name)


def _resubscribe(channel):
    """A new subscription once Redis answers again; comments meanwhile keep the client."""
    while True:
        time.sleep(1)
        yield ": reconnecting\n\n"
        listener = sse.redis.pubsub(ignore_subscribe_messages=True)
        try:
            listener.subscribe(channel)
            return listener
        except redis.RedisError:
            listener.close()


def init_app(app):
    app.register_blueprint(bp)

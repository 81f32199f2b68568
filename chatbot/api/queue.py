"""Where requests stand: GET /api/queue, GET/DELETE /api/queue/<id>, and the SSE streams
(GET /api/events?channel=<request id> or channel=queue)."""
import json
import logging
import time

import redis
from flask import Blueprint, Response, jsonify, request
from flask_sse import Message, sse

from chatbot import line as lines, routing
from chatbot.api import ApiError

bp = Blueprint("queue", __name__)
log = logging.getLogger(__name__)
KEEPALIVE_SECONDS = 3


@bp.get("/api/queue")
def overview():
    line = lines.get()
    return jsonify(queues=[line.snapshot(q) for q in routing.get().queues.values()])


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
    if not info:
        raise ApiError(404, f"request '{request_id}' not found")
    return info


@bp.get("/api/events")
def events():
    """flask-sse's messages, but subscribed before the first byte goes out (so a client that
    has the headers misses nothing) and with a comment every few seconds, which keeps proxies
    from closing the stream and lets us notice a client that left. After a Redis restart it
    subscribes again (what was published meanwhile is lost, as with any pub/sub)."""
    channel = request.args.get("channel") or lines.QUEUE_CHANNEL
    pubsub = sse.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)

    def stream():
        listener = pubsub
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

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


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

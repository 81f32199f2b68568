"""Where requests stand: GET /api/queue, GET/DELETE /api/queue/<id>, and the SSE streams
(GET /api/events?channel=<request id> or channel=queue)."""
import json

from flask import Blueprint, Response, jsonify, request
from flask_sse import Message, sse

from chatbot import queueing, routing
from chatbot.api import ApiError
from chatbot.tasks import cancel_request

bp = Blueprint("queue", __name__)
KEEPALIVE_SECONDS = 3


@bp.get("/api/queue")
def overview():
    line = queueing.get()
    return jsonify(queues=[line.snapshot(q) for q in routing.get().queues.values()])


@bp.get("/api/queue/<request_id>")
def one(request_id):
    info = _known(request_id)
    position = queueing.get().position(request_id, info["queue"])
    return jsonify(request_id=request_id, position=position, **info)


@bp.delete("/api/queue/<request_id>")
def cancel(request_id):
    _known(request_id)
    info = cancel_request(request_id)
    return jsonify(request_id=request_id, state="cancelled", was=info.get("state"))


def _known(request_id):
    info = queueing.get().info(request_id)
    if not info:
        raise ApiError(404, f"request '{request_id}' not found")
    return info


@bp.get("/api/events")
def events():
    """flask-sse's messages, but subscribed before the first byte goes out (so a client that
    has the headers misses nothing) and with a comment every few seconds, which keeps proxies
    from closing the stream and lets us notice a client that left."""
    pubsub = sse.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(request.args.get("channel") or queueing.QUEUE_CHANNEL)

    def stream():
        try:
            yield ": subscribed\n\n"
            while True:
                message = pubsub.get_message(timeout=KEEPALIVE_SECONDS)
                if message is None:
                    yield ": keep-alive\n\n"
                elif message["type"] == "message":
                    yield str(Message(**json.loads(message["data"])))
        finally:
            pubsub.close()

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


def init_app(app):
    app.register_blueprint(bp)

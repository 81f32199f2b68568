"""Where requests stand: GET /api/queue, GET/DELETE /api/queue/<id>, and the SSE streams
(GET /api/events?channel=<request id> or channel=queue)."""
from flask import Blueprint, jsonify
from flask_sse import sse

from chatbot import queueing, routing
from chatbot.api import ApiError
from chatbot.tasks import cancel_request

bp = Blueprint("queue", __name__)


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


def init_app(app):
    app.register_blueprint(bp)
    app.register_blueprint(sse, url_prefix="/api/events")

"""Ollama's native API. Views are thin: validate, then queue or pass through."""
from flask import Blueprint, Response, current_app, request

from chatbot.api import turns, validate, wire

bp = Blueprint("ollama", __name__)


def upstream():
    return current_app.extensions["upstream"]


@bp.route("/", methods=["GET", "HEAD"])
def root():
    return Response("Ollama is running", mimetype="text/plain")


def passthrough(method, path, body=None, data=None):
    """The upstream's answer, byte for byte, streamed as it comes (pull progress lines)."""
    resp = upstream().request(method, path, json=body, data=data, stream=True)
    return Response(resp.iter_content(chunk_size=None), resp.status_code,
                    content_type=resp.headers.get("Content-Type"))


@bp.get("/api/version")
def version():
    return passthrough("GET", "/api/version")


@bp.get("/api/tags")
def tags():
    return passthrough("GET", "/api/tags")


@bp.post("/api/show")
def show():
    body = validate.json_body("ShowRequest")
    if not body.get("model") and body.get("name"):  # older clients send `name`
        body["model"] = body["name"]
    validate.model_name(body)
    return passthrough("POST", "/api/show", body)


@bp.get("/api/ps")
def ps():
    return passthrough("GET", "/api/ps")


@bp.post("/api/embed")
@bp.post("/api/embeddings")
@bp.post("/api/pull")
@bp.post("/api/push")
@bp.post("/api/create")
@bp.post("/api/copy")
@bp.delete("/api/delete")
def model_passthrough():
    """Embeddings and model management go straight to the upstream, not through the queue."""
    body = validate.json_body("Request")
    if not body.get("model") and body.get("name"):  # older clients send `name`
        body["model"] = body["name"]
    if request.path not in ("/api/copy",):
        validate.model_name(body)
    return passthrough(request.method, request.path, body)


@bp.route("/api/blobs/<digest>", methods=["POST", "HEAD"])
def blobs(digest):
    return passthrough(request.method, f"/api/blobs/{digest}", data=request.stream)


@bp.post("/api/chat")
def chat():
    body = validate.json_body("ChatRequest")
    model = validate.model_name(body)
    messages = validate.chat_messages(body)
    return _turn("chat", body, model, messages, wire.OllamaChat)


@bp.post("/api/generate")
def generate():
    body = validate.json_body("GenerateRequest")
    model = validate.model_name(body)
    messages = validate.prompt_messages(body)
    return _turn("generate", body, model, messages, wire.OllamaGenerate)


def _turn(kind, body, model, messages, wire_class):
    stream = validate.stream_flag(body)
    session_id = validate.session_id(body)
    # Every field Ollama knows goes upstream untouched; the session and messages are ours.
    upstream_body = {k: v for k, v in body.items() if k not in ("session_id", "messages", "stream")}
    request_id, queue = turns.submit(kind, model, messages, upstream_body, session_id)
    return turns.respond(request_id, queue, session_id, stream, wire_class(session_id))

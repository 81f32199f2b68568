"""Ollama's native API. Views are thin: validate, then queue or pass through."""
import json

from flask import Blueprint, Response, current_app

from chatbot.api import shapes, turns, validate

bp = Blueprint("ollama", __name__)


def upstream():
    return current_app.extensions["upstream"]


@bp.route("/", methods=["GET", "HEAD"])
def root():
    return Response("Ollama is running", mimetype="text/plain")


def passthrough(method, path, body=None):
    """The upstream's answer, byte for byte."""
    resp = upstream().request(method, path, json=body)
    return Response(resp.content, resp.status_code, content_type=resp.headers.get("Content-Type"))


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


@bp.post("/api/chat")
def chat():
    body = validate.json_body("ChatRequest")
    model = validate.model_name(body)
    messages = validate.chat_messages(body)
    return _turn("chat", body, model, messages, None, shapes.chat_final)


@bp.post("/api/generate")
def generate():
    body = validate.json_body("GenerateRequest")
    model = validate.model_name(body)
    messages = validate.prompt_messages(body)
    chunk = lambda raw: shapes.generate_chunk(json.loads(raw))  # noqa: E731
    return _turn("generate", body, model, messages, chunk, shapes.generate_final)


def _turn(kind, body, model, messages, chunk_shape, final_shape):
    stream = validate.stream_flag(body)
    session_id = validate.session_id(body)
    current_app.extensions["catalog"].require(model)
    request_id = turns.submit(kind, model, messages, body, session_id)
    return turns.respond(request_id, session_id, stream, chunk_shape, final_shape)

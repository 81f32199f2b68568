"""Ollama's native API. Views are thin: validate, then queue or pass through.

With several hosts, listings are merged, a request about a model goes to a host that has
it, and the rest (pull, create, blobs, version) to the first host."""
from flask import Blueprint, Response, current_app, redirect, request

from chatbot.upstream import resident, routing
from chatbot import web
from chatbot.api import auth, embeddings, turns, validate, wire
from chatbot.api.errors import ApiError
from chatbot.api.wire import dumps
from chatbot.upstream import UpstreamError

bp = Blueprint("ollama", __name__)


@bp.route("/", methods=["GET", "HEAD"])
def root():
    # A browser is sent to the chat page; every other client (curl, Ollama's, HEAD) gets
    # Ollama's answer, as before.
    if request.method == "GET" and web.wants_page():
        resp = redirect("/chat")
    else:
        resp = Response("Ollama is running", mimetype="text/plain")
    resp.vary.add("Accept")
    return resp


def passthrough(method, path, body=None, data=None, host=None):
    """The upstream's answer, byte for byte, streamed as it comes (pull progress lines)."""
    resp = routing.get().upstream(host).request(method, path, json=body, data=data, stream=True)
    return Response(resp.iter_content(chunk_size=None), resp.status_code,
                    content_type=resp.headers.get("Content-Type"))


@bp.get("/api/version")
def version():
    return passthrough("GET", "/api/version")


@bp.get("/api/status")
def status():
    """Ollama's cloud status (0.16.2): chatbot never sends a request to Ollama's cloud, so it
    is disabled, by this server's own setting ("config")."""
    return Response(dumps({"cloud": {"disabled": True, "source": "config"}}),
                    mimetype="application/json")


@bp.get("/api/tags")
def tags():
    return kept("GET", "/api/tags")


def listing(path):
    router = routing.get()
    if len(router.hosts) == 1:
        return passthrough("GET", path)
    return Response(dumps(router.merged(path)), mimetype="application/json")


def kept(method, path, body=None, host=None):
    status, content_type, content = model_info(method, path, body, host)
    return Response(content, status, content_type=content_type)


def model_info(method, path, body=None, host=None):
    """A model listing or description, (status, content type, bytes) as the upstream gave
    them, kept briefly (MODEL_INFO_CACHE_SECONDS; see chatbot.upstream.catalog.Answers)."""
    def fetch():
        router = routing.get()
        if method == "GET" and len(router.hosts) > 1:  # a listing of every host's models
            return 200, "application/json", dumps(router.merged(path)).encode()
        resp = router.upstream(host).request(method, path, json=body)
        return resp.status_code, resp.headers.get("Content-Type"), resp.content

    return current_app.extensions["model_answers"].get(
        (path, host, dumps(body) if body else ""), fetch)


@bp.post("/api/show")
def show():
    body = validate.json_body("ShowRequest")
    if not body.get("model") and body.get("name"):  # older clients send `name`
        body["model"] = body["name"]
    return kept("POST", "/api/show", body, host=holder(validate.model_name(body)))


@bp.get("/api/ps")
def ps():
    """What is loaded now (never kept). Beyond Ollama, while requests wait in line for a model
    their host has not loaded, `queued` lists those models and how many wait for each."""
    router = routing.get()
    waiting = {host: resident.waiting_models(router.line, queue)
               for host, queue in router.queues.items()}
    if not any(waiting.values()):
        return listing("/api/ps")
    listings = router.listings("/api/ps")
    answer = router.merged("/api/ps", listings)
    queued = resident.queued_loads(waiting, {host: resident.names(models)
                                             for host, models in listings.items()})
    return Response(dumps({**answer, **({"queued": queued} if queued else {})}),
                    mimetype="application/json")


@bp.post("/api/embed")
@bp.post("/api/embeddings")
@bp.post("/api/pull")
@bp.post("/api/push")
@bp.post("/api/create")
@bp.post("/api/copy")
@bp.delete("/api/delete")
def model_passthrough():
    """Model management goes straight to the upstream; embeddings take their turn in the line
    (chatbot.api.embeddings)."""
    embedding = request.path in ("/api/embed", "/api/embeddings")
    if not embedding:
        _may_manage_models()
    body = validate.json_body("Request")
    if not body.get("model") and body.get("name"):  # older clients send `name`
        body["model"] = body["name"]
    if embedding:
        model = validate.model_name(body)
        return Response(dumps(embeddings.embed(model, request.path, body)),
                        mimetype="application/json")
    current_app.extensions["model_answers"].forget()  # the models are about to change
    if request.path == "/api/copy":
        return passthrough("POST", "/api/copy", body, host=holder(body.get("source")))
    model = validate.model_name(body)
    about_a_model = request.path in ("/api/embed", "/api/embeddings", "/api/delete", "/api/push")
    return passthrough(request.method, request.path, body,
                       host=holder(model) if about_a_model else None)


def holder(model):
    """A host that has `model` (the first host when only one is configured or none has it,
    so that its own error reaches the client)."""
    router = routing.get()
    if len(router.hosts) == 1 or not isinstance(model, str) or not model:
        return None
    try:
        return router.candidates(model)[0]
    except UpstreamError:
        return None


def _may_manage_models():
    """Pulling, pushing, creating, copying and deleting models (and blobs): an admin key's
    business while keys are on, and nobody's with ALLOW_MODEL_MANAGEMENT=false."""
    if not current_app.config["ALLOW_MODEL_MANAGEMENT"]:
        raise ApiError(403, "model management is switched off on this server")
    auth.require_admin("model management")


@bp.route("/api/blobs/<digest>", methods=["POST", "HEAD"])
def blobs(digest):
    _may_manage_models()
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
    struct = "ChatRequest" if kind == "chat" else "GenerateRequest"
    validate.options(body, struct)
    validate.turn_fields(body, struct)
    validate.format_(body.get("format"))
    session_id = validate.session_id(body)
    # Every field Ollama knows goes upstream untouched; the session and messages are ours.
    resumable, branch = validate.resumable(body), validate.branch(body)
    upstream_body = {k: v for k, v in body.items()
                     if k not in ("session_id", "messages", "stream", "resumable", "branch")}
    wire_ = wire_class(session_id)
    return turns.turn(kind, model, messages, upstream_body, session_id, wire_, stream, resumable,
                      branch)

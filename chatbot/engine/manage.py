"""Ollama's model-management endpoints, for an engine with no registry (offline).

- /api/copy and /api/create (from an existing model only) make another name for the same
  GGUF file; /api/delete forgets a name. Names live in engine-models.json in the cache dir
  (store.py), so they survive restarts and are shared by engines using the same cache.
- Deleting never removes a file. Deleting the bundled model hides it for the life of the
  process only (it is back after a restart: `chatbot up` relies on it); a deleted folder
  model (CHATBOT_ENGINE_MODELS) stays hidden until its file changes. A loaded model that no
  name refers to anymore is unloaded (at once, or after the generation running now).
- /api/pull of a model the engine has reports Ollama's progress for an up-to-date model;
  any other pull fails as Ollama's does when the registry has no such manifest.
- /api/push always fails: there is no registry to push to. Blob uploads are refused;
  HEAD /api/blobs/<digest> says whether a served model file has that sha256.
"""
import json
import re

from flask import Blueprint, Response, jsonify

from .completions import NDJSON
from .ollama_format import ApiError, json_line
from .parsing import engine, read_body, stream_flag, typed
from .store import valid_name

bp = Blueprint("engine_manage", __name__)

PULL_MISSING = "pull model manifest: file does not exist"
NO_REGISTRY = "the bundled engine has no registry to push to"
NO_UPLOADS = "the bundled engine does not accept blob uploads: create a model from an " \
             "existing one with 'from', or put the GGUF file in CHATBOT_ENGINE_MODELS"
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


def _go_quote(text):
    """Go's %q, near enough: a JSON string literal."""
    return json.dumps(text, ensure_ascii=False)


def _name(body, struct):
    """body["model"], or the legacy body["name"] (Go's cmp.Or(r.Model, r.Name))."""
    return (typed(body, "model", str, "string", struct)
            or typed(body, "name", str, "string", struct) or "")


def _empty_ok():
    """200 with no body: what Ollama answers copy and delete with."""
    response = Response(status=200)
    del response.headers["Content-Type"]
    return response


def _progress(lines, stream):
    """Streamed: the NDJSON lines as they are. Not streamed: Ollama's waitForStream, the
    last progress object, or the first error as a 500."""
    if stream:
        return Response((json_line(line) for line in lines), mimetype=NDJSON)
    for line in lines:
        if "error" in line:
            raise ApiError(500, line["error"])
    return jsonify(lines[-1])


@bp.post("/api/copy")
def copy_model():
    body = read_body("CopyRequest")
    source = typed(body, "source", str, "string", "CopyRequest") or ""
    destination = typed(body, "destination", str, "string", "CopyRequest") or ""
    if not valid_name(source):
        raise ApiError(400, f"source {_go_quote(source)} is invalid")
    if not valid_name(destination):
        raise ApiError(400, f"destination {_go_quote(destination)} is invalid")
    registry = engine().registry
    model = registry.resolve(source)
    if model is None:
        raise ApiError(404, f"model {_go_quote(source)} not found")
    registry.copy(model, destination)
    return _empty_ok()


@bp.delete("/api/delete")
def delete_model():
    body = read_body("DeleteRequest")
    name = _name(body, "DeleteRequest")
    if not valid_name(name):
        raise ApiError(400, f"name {_go_quote(name)} is invalid")
    eng = engine()
    model = eng.registry.resolve(name)
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    eng.registry.delete(model)
    if eng.lock.acquire(blocking=False):  # else the next request's sweep unloads it
        try:
            eng.registry.sweep()
        finally:
            eng.lock.release()
    return _empty_ok()


@bp.post("/api/pull")
def pull():
    body = read_body("PullRequest")
    name = _name(body, "PullRequest")
    typed(body, "insecure", bool, "bool", "PullRequest")
    stream = stream_flag(body, "PullRequest")
    if not valid_name(name):
        raise ApiError(400, "invalid model name")
    registry = engine().registry
    model = registry.resolve(name)
    if model is None:
        return _progress([{"status": "pulling manifest"}, {"error": PULL_MISSING}], stream)
    digest, size = registry.digest(model), model.stat().st_size
    return _progress([
        {"status": "pulling manifest"},
        {"status": f"pulling {digest[:12]}", "digest": f"sha256:{digest}", "total": size,
         "completed": size},
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ], stream)


@bp.post("/api/push")
def push():
    body = read_body("PushRequest")
    name = _name(body, "PushRequest")
    typed(body, "insecure", bool, "bool", "PushRequest")
    stream = stream_flag(body, "PushRequest")
    if not name:
        raise ApiError(400, "model is required")
    found = engine().registry.resolve(name) if valid_name(name) else None
    error = NO_REGISTRY if found else f"model '{name}' not found"
    return _progress([{"status": "retrieving manifest"}, {"error": error}], stream)


# Fields of a CreateRequest that would change the new model, which the engine cannot store.
_UNSUPPORTED = ("template", "system", "parameters", "messages", "license")


@bp.post("/api/create")
def create():
    body = read_body("CreateRequest")
    name = _name(body, "CreateRequest")
    stream = stream_flag(body, "CreateRequest")
    source = typed(body, "from", str, "string", "CreateRequest") or ""
    if body.get("files") or body.get("adapters"):
        raise ApiError(400, "the bundled engine cannot create a model from uploaded files or "
                            "adapters: it has no blob store; use 'from' with a model it serves")
    if body.get("quantize") or body.get("quantization"):
        raise ApiError(400, "the bundled engine cannot quantize models")
    asked = [key for key in _UNSUPPORTED if body.get(key) not in (None, "", [], {})]
    if asked:
        raise ApiError(400, f"the bundled engine cannot set {', '.join(asked)} on a model: "
                            "create it with only 'from'")
    if not valid_name(name):
        raise ApiError(400, "invalid model name")
    if not source:
        raise ApiError(400, "neither 'from' or 'files' was specified (the bundled engine can "
                            "only create a model from one it serves)")
    registry = engine().registry
    model = registry.resolve(source) if valid_name(source) else None
    if model is None:
        raise ApiError(404, f"model '{source}' not found")
    digest = registry.digest(model)
    registry.copy(model, name)
    return _progress([{"status": f"using existing layer sha256:{digest}"},
                      {"status": "writing manifest"}, {"status": "success"}], stream)


def _blob_digest(digest):
    match = _DIGEST.fullmatch(digest)
    if not match:
        raise ApiError(400, "invalid digest format")
    return match[1].lower()


@bp.route("/api/blobs/<digest>", methods=["HEAD"])
def head_blob(digest):
    if engine().registry.by_digest(_blob_digest(digest)) is None:
        raise ApiError(404, f"blob {_go_quote(digest)} not found")
    return _empty_ok()


@bp.post("/api/blobs/<digest>")
def create_blob(digest):
    _blob_digest(digest)
    raise ApiError(400, NO_UPLOADS)

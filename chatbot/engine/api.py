"""Ollama's informational endpoints and embeddings."""
import math
import time

from flask import Blueprint, Response, jsonify

from .ollama_format import (VERSION, ApiError, details, from_timestamp, keep_alive_seconds,
                            model_info, modelfile_text, parameters_text, rfc3339)
from .completions import capabilities
from .generation import load_options
from .parsing import engine, integer, read_body, require_model, typed

bp = Blueprint("engine_api", __name__)


@bp.route("/", methods=["GET", "HEAD"])
def root():
    return Response("Ollama is running", mimetype="text/plain")


@bp.get("/api/version")
def version():
    return jsonify(version=VERSION)


def _summary(model, listing=False):
    registry = engine().registry
    info = registry.info(model)  # first: an unreadable file fails before it is hashed
    st = model.stat()
    entry = {"name": model.name, "model": model.name,
             "modified_at": from_timestamp(model.modified_at()),
             "size": st.st_size, "digest": registry.digest(model),
             "details": details(info, lengths=listing)}
    if listing:  # Ollama's ListModelResponse; ps has neither these lengths nor capabilities
        entry["capabilities"] = capabilities(info)
    return entry


@bp.get("/api/tags")
def tags():
    models = []
    for model in engine().registry.files():
        try:
            models.append(_summary(model, listing=True))
        except (OSError, ValueError) as exc:  # one bad file must not hide the others
            engine().registry.unreadable(model, exc)
    return jsonify(models=models)


@bp.get("/api/status")
def status():
    """Ollama's cloud status: the engine has no cloud, so it answers as a local Ollama
    started with OLLAMA_NO_CLOUD=1 (server/routes.go StatusHandler, envconfig)."""
    return jsonify(cloud={"disabled": True, "source": "env"})


@bp.get("/api/ps")
def ps():
    eng = engine()
    if eng.lock.acquire(blocking=False):  # never unload under a running generation
        try:
            eng.registry.sweep()
        finally:
            eng.lock.release()
    models = []
    # Ollama lists the longest time left first.
    for loaded in sorted(eng.registry.running(), key=lambda m: m.expires_at, reverse=True):
        entry = _summary(loaded.model)
        del entry["modified_at"]
        entry.update(expires_at=rfc3339(loaded.expires_at), size_vram=0,
                     context_length=loaded.n_ctx)
        models.append(entry)
    return jsonify(models=models)


@bp.post("/api/show")
def show():
    body = read_body("ShowRequest")
    name, model = require_model(body, "ShowRequest", legacy_name=True)
    registry = engine().registry
    verbose = bool(typed(body, "verbose", bool, "bool", "ShowRequest"))
    info = registry.info(model)
    if verbose:  # arrays (vocabulary, merges) are only read when asked for
        from .gguf import read_gguf

        full = read_gguf(model.path, keep_arrays=True)
        full.metadata.pop("tokenizer.chat_template", None)
        shown = model_info(full, verbose=True)
    else:
        shown = model_info(info)
    return jsonify(
        license=str(info.metadata.get("general.license", "")),
        modelfile=modelfile_text(name, model.path, info),
        parameters=parameters_text(info),
        template=info.chat_template,
        details=details(info),
        model_info=shown,
        capabilities=capabilities(info),
        modified_at=from_timestamp(model.modified_at()),
    )


def _embed(body, struct, inputs, normalize):
    """Vectors for `inputs` with the model's embedding instance, under the engine lock."""
    received = time.perf_counter_ns()
    name, model = require_model(body, struct)
    keep_alive = keep_alive_seconds(body.get("keep_alive"))
    truncate = typed(body, "truncate", bool, "bool", struct)
    options = typed(body, "options", dict, "map[string]interface {}", struct) or {}
    num_ctx, _, _ = load_options(options)
    eng = engine()
    with eng.lock:
        eng.registry.sweep()
        llm, load_ns = eng.registry.load_embed(model, num_ctx)
        vectors, count = [], 0
        if inputs:
            lengths = [len(llm.tokenize(text.encode("utf-8"))) for text in inputs]
            if 0 in lengths:
                raise ApiError(400, "input cannot be empty")
            # Ollama counts the text's tokens plus a BOS and an EOS (CLS, SEP) against
            # the context: the same as these lengths, which include both.
            if truncate is False and max(lengths) > llm.n_batch:
                raise ApiError(400, "the input length exceeds the context length")
            # Llama.embed cuts each input at n_batch, which we made equal to n_ctx.
            vectors, count = llm.embed(inputs, normalize=normalize, truncate=True,
                                       return_count=True)
        eng.registry.touch(model, keep_alive)
    return name, vectors, count, load_ns, time.perf_counter_ns() - received


@bp.post("/api/embed")
def embed():
    body = read_body("EmbedRequest")
    dimensions = integer(body, "dimensions", "EmbedRequest")  # a decoding error: first
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw] if raw else []  # Ollama answers "" with no embeddings
    elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        inputs = raw
    elif raw is None:
        inputs = []
    else:
        raise ApiError(400, "invalid input type")
    name, vectors, count, load_ns, total = _embed(body, "EmbedRequest", inputs, True)
    if dimensions > 0:  # Ollama ignores 0, negative and too large values, without an error
        vectors = [_unit(v[:dimensions]) for v in vectors]
    return jsonify(model=name, embeddings=vectors, total_duration=total, load_duration=load_ns,
                   prompt_eval_count=count)


def _unit(vector):
    """The vector scaled to length 1, as Ollama's normalize (server/routes.go)."""
    norm = max(math.sqrt(sum(x * x for x in vector)), 1e-12)
    return [x / norm for x in vector]


@bp.post("/api/embeddings")
def embeddings():
    """The legacy endpoint: one prompt, an unnormalised vector."""
    body = read_body("EmbeddingRequest")
    prompt = typed(body, "prompt", str, "string", "EmbeddingRequest") or ""
    _, vectors, _, _, _ = _embed(body, "EmbeddingRequest", [prompt] if prompt else [], False)
    return jsonify(embedding=vectors[0] if vectors else [])


@bp.get("/metrics")
def metrics():
    """The prompt cache's and the loaded models' figures in Prometheus' text format (not an
    Ollama route)."""
    figures = engine().registry.prompts.figures()
    lines = []
    for name, kind, value in (("hits", "counter", figures["hits"]),
                              ("misses", "counter", figures["misses"]),
                              ("loads", "counter", figures["loads"]),
                              ("stored", "counter", figures["stored"]),
                              ("reused_tokens", "counter", figures["reused_tokens"]),
                              ("evaluated_tokens", "counter", figures["evaluated_tokens"]),
                              ("states", "gauge", figures["states"]),
                              ("bytes", "gauge", figures["bytes"]),
                              ("budget_bytes", "gauge", figures["budget_bytes"])):
        metric = f"chatbot_engine_prompt_cache_{name}" + ("_total" if kind == "counter" else "")
        lines += [f"# TYPE {metric} {kind}", f"{metric} {value}"]
    models = engine().registry.resident.figures()
    lines += ["# TYPE chatbot_engine_model_loads_total counter",
              f"chatbot_engine_model_loads_total {models['loads']}",
              "# TYPE chatbot_engine_model_unloads_total counter"]
    lines += [f'chatbot_engine_model_unloads_total{{reason="{reason}"}} {count}'
              for reason, count in models["unloads"].items()]
    lines += ["# TYPE chatbot_engine_models_loaded gauge",
              f"chatbot_engine_models_loaded {models['loaded']}",
              "# TYPE chatbot_engine_max_loaded_models gauge",
              f"chatbot_engine_max_loaded_models {models['max_loaded']}"]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")

"""OpenAI-compatible API over the same queue and sessions (session via X-Session-ID)."""
import json
from datetime import datetime

from flask import Blueprint, Response

from chatbot import routing
from chatbot.api import ApiError, openai_wire, turns, validate
from chatbot.upstream import UpstreamError

bp = Blueprint("openai", __name__, url_prefix="/v1")
# OpenAI request field -> Ollama option.
OPTION_NAMES = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
                "max_tokens": "num_predict", "max_completion_tokens": "num_predict",
                "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"}


@bp.errorhandler(ApiError)
@bp.errorhandler(UpstreamError)
def _error(exc):
    return openai_wire.failure(exc.status, exc.error)


def all_models():
    return routing.get().merged("/api/tags")["models"]


def _model_entry(model):
    created = model.get("modified_at", "")[:19]
    try:
        stamp = int(datetime.fromisoformat(created).timestamp())
    except ValueError:
        stamp = 0
    return {"id": model["name"], "object": "model", "created": stamp, "owned_by": "library"}


@bp.get("/models")
def models():
    return _json({"object": "list", "data": [_model_entry(m) for m in all_models()]})


@bp.get("/models/<path:model>")
def model(model):
    for entry in all_models():
        if model in (entry["name"], entry["name"].removesuffix(":latest")):
            return _json(_model_entry(entry))
    raise ApiError(404, f"model '{model}' not found")


@bp.post("/chat/completions")
def chat_completions():
    body = validate.json_body("ChatCompletionRequest")
    model = validate.model_name(body)
    messages = [_message(m) for m in _list(body, "messages")]
    validate.chat_messages({"messages": messages})
    upstream_body = {"options": _options(body), **_format(body)}
    if body.get("tools"):
        upstream_body["tools"] = body["tools"]
    return _turn("chat", body, model, messages, upstream_body, openai_wire.OpenAIChat)


@bp.post("/completions")
def completions():
    body = validate.json_body("CompletionRequest")
    model = validate.model_name(body)
    prompt = body.get("prompt") or ""
    if isinstance(prompt, list):  # OpenAI allows a list; one prompt per request, as Ollama
        prompt = prompt[0] if prompt else ""
    upstream_body = {"prompt": prompt, "options": _options(body), "raw": False}
    if body.get("suffix"):
        upstream_body["suffix"] = body["suffix"]
    messages = validate.prompt_messages({"prompt": prompt})
    return _turn("generate", body, model, messages, upstream_body, openai_wire.OpenAICompletion)


@bp.post("/embeddings")
def embeddings():
    body = validate.json_body("EmbedRequest")
    model = validate.model_name(body)
    if not body.get("input"):
        raise ApiError(400, "invalid input")
    router = routing.get()
    upstream = router.upstream(router.candidates(model)[0])
    result = upstream.post_json("/api/embed", {"model": model, "input": body["input"]})
    data = [{"object": "embedding", "embedding": e, "index": i}
            for i, e in enumerate(result["embeddings"])]
    tokens = result.get("prompt_eval_count", 0)
    return _json({"object": "list", "data": data, "model": model,
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _turn(kind, body, model, messages, upstream_body, wire_class):
    stream = validate.stream_flag({"stream": body.get("stream", False)})  # OpenAI: not streamed
    validate.options(upstream_body, "ChatCompletionRequest")
    session_id = validate.session_id({})
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    resumable, wire = validate.resumable(body), wire_class(model, include_usage)
    request_id, queue = turns.submit(kind, model, messages, upstream_body, session_id,
                                     (wire, stream), resumable)
    return turns.respond(request_id, queue, session_id, stream, wire, resumable)


def _list(body, name):
    value = body.get(name)
    if not isinstance(value, list):
        raise ApiError(400, f"invalid {name}: must be a list")
    return value


def _message(message):
    """An OpenAI message as Ollama's: text parts joined, data-URL images, tool arguments parsed."""
    if not isinstance(message, dict):
        raise ApiError(400, "invalid message: must be an object")
    out = {"role": message.get("role"), "content": ""}
    content = message.get("content")
    if isinstance(content, list):
        images = []
        for part in content:
            if not isinstance(part, dict):
                raise ApiError(400, "invalid message content part: must be an object")
            if part.get("type") == "text":
                out["content"] += part.get("text") or ""
            elif part.get("type") == "image_url":
                image = part.get("image_url") or {}
                url = image.get("url", "") if isinstance(image, dict) else ""
                if not isinstance(url, str):
                    raise ApiError(400, "invalid image_url: url must be a string")
                images.append(url.split("base64,", 1)[-1])
        if images:
            out["images"] = images
    elif content is not None:
        out["content"] = content
    if message.get("tool_calls"):
        out["tool_calls"] = [_tool_call(call) for call in _list(message, "tool_calls")]
    if message.get("name") and out["role"] == "tool":
        out["tool_name"] = message["name"]
    return out


def _tool_call(call):
    """An OpenAI tool call ({function: {name, arguments: JSON text}}) as Ollama's."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ApiError(400, "invalid tool_calls: each needs a function with a name")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ApiError(400, "invalid tool_calls: function.arguments must be a JSON object text")
    return {"function": {"name": function["name"], "arguments": parsed}}


def _options(body):
    options = {ours: body[theirs] for theirs, ours in OPTION_NAMES.items() if body.get(theirs) is not None}
    if isinstance(options.get("stop"), str):
        options["stop"] = [options["stop"]]
    return options


def _format(body):
    fmt = body.get("response_format") or {}
    if not isinstance(fmt, dict):
        raise ApiError(400, "invalid response_format: must be an object")
    if fmt.get("type") == "json_object":
        return {"format": "json"}
    if fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema") or {}
        return {"format": (schema.get("schema") if isinstance(schema, dict) else None) or "json"}
    return {}


def _json(obj):
    return Response(json.dumps(obj), mimetype="application/json")

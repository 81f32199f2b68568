"""OpenAI-compatible API over the same queue and sessions (session via X-Session-ID)."""
import base64
import json
import struct
from datetime import datetime

from flask import Blueprint, Response

from chatbot.api import anthropic_wire, ollama, openai_wire, turns, validate
from chatbot.api.embeddings import embed
from chatbot.api.errors import ApiError
from chatbot.upstream import UpstreamError

bp = Blueprint("openai", __name__, url_prefix="/v1")
# OpenAI request field -> Ollama option.
OPTION_NAMES = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
                "max_tokens": "num_predict", "max_completion_tokens": "num_predict",
                "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"}


@bp.errorhandler(ApiError)
@bp.errorhandler(UpstreamError)
def _error(exc):
    if anthropic_wire.asked():  # the anthropic SDK reads the model list here: its shape
        return anthropic_wire.failure(exc.status, exc.error, getattr(exc, "headers", None))
    return openai_wire.failure(exc.status, exc.error)


def all_models():
    return json.loads(ollama.model_info("GET", "/api/tags")[2]).get("models") or []


def _model_entry(model):
    created = model.get("modified_at", "")[:19]
    try:
        stamp = int(datetime.fromisoformat(created).timestamp())
    except ValueError:
        stamp = 0
    return {"id": model["name"], "object": "model", "created": stamp, "owned_by": "library"}


@bp.get("/models")
def models():
    if anthropic_wire.asked():  # Anthropic's SDKs and Claude Code send anthropic-version
        return _json(anthropic_wire.model_list(all_models()))
    return _json({"object": "list", "data": [_model_entry(m) for m in all_models()]})


@bp.get("/models/<path:model>")
def model(model):
    for entry in all_models():
        if model in (entry["name"], entry["name"].removesuffix(":latest")):
            shape = anthropic_wire.model_entry if anthropic_wire.asked() else _model_entry
            return _json(shape(entry))
    raise ApiError(404, f"model '{model}' not found")


@bp.post("/chat/completions")
def chat_completions():
    body = validate.json_body("ChatCompletionRequest")
    model = validate.model_name(body)
    raw = _list(body, "messages")
    messages = [_message(m, raw) for m in raw]
    validate.chat_messages({"messages": messages})
    upstream_body = {"options": _options(body), **_format(body), **think(body)}
    if body.get("tools"):
        upstream_body["tools"] = body["tools"]
    if body.get("logprobs") is not None:
        upstream_body["logprobs"] = body["logprobs"]
    if body.get("top_logprobs"):
        upstream_body["top_logprobs"] = body["top_logprobs"]
    return _turn("chat", body, model, messages, upstream_body, openai_wire.OpenAIChat)


@bp.post("/completions")
def completions():
    body = validate.json_body("CompletionRequest")
    model = validate.model_name(body)
    prompt = body.get("prompt") or ""
    if isinstance(prompt, list):  # OpenAI allows a list; one prompt per request, as Ollama
        prompt = prompt[0] if prompt else ""
    # Ollama's FromCompleteRequest always sets both penalties (0 when not given).
    options = {"frequency_penalty": 0.0, "presence_penalty": 0.0, **_options(body)}
    upstream_body = {"prompt": prompt, "options": options, "raw": False}
    if body.get("suffix"):
        upstream_body["suffix"] = body["suffix"]
    if _go_int(body.get("logprobs")) > 0:  # OpenAI's count of top logprobs per token
        upstream_body.update(logprobs=True, top_logprobs=body["logprobs"])
    messages = validate.prompt_messages({"prompt": prompt})
    return _turn("generate", body, model, messages, upstream_body, openai_wire.OpenAICompletion)


@bp.post("/embeddings")
def embeddings():
    body = validate.json_body("EmbedRequest")
    model = validate.model_name(body)
    encoding = body.get("encoding_format") or "float"
    if not isinstance(encoding, str) or encoding.lower() not in ("float", "base64"):
        raise ApiError(400, f"Invalid value for 'encoding_format' = {encoding}. Supported "
                            "values: ['float', 'base64'].")
    if not body.get("input"):
        raise ApiError(400, "invalid input")
    request = {"model": model, "input": body["input"]}
    if body.get("dimensions"):
        request["dimensions"] = body["dimensions"]
    result = embed(model, "/api/embed", request)  # in its asker's turn of the line
    as_base64 = encoding.lower() == "base64"
    data = [{"object": "embedding", "embedding": _base64(e) if as_base64 else e, "index": i}
            for i, e in enumerate(result["embeddings"])]
    tokens = result.get("prompt_eval_count", 0)
    return _json({"object": "list", "data": data, "model": model,
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _base64(vector):
    """float32s, little-endian, in base64 (openai.floatsToBase64)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _turn(kind, body, model, messages, upstream_body, wire_class):
    stream = validate.stream_flag(body, default=False)  # OpenAI: not streamed
    validate.options(upstream_body, "ChatCompletionRequest")
    validate.turn_fields(upstream_body, "ChatRequest" if kind == "chat" else "GenerateRequest")
    validate.format_(upstream_body.get("format"))
    session_id = validate.session_id({})
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    resumable, wire = validate.resumable(body), wire_class(model, include_usage)
    return turns.turn(kind, model, messages, upstream_body, session_id, wire, stream, resumable)


def _list(body, name):
    value = body.get(name)
    if not isinstance(value, list):
        raise ApiError(400, f"invalid {name}: must be a list")
    return value


def _message(message, messages):
    """An OpenAI message as Ollama's (openai.FromChatRequest): text parts joined, data-URL
    images, `reasoning` as thinking, tool calls with their ids and arguments parsed, and a
    tool result's tool_name from `name` or else from the call its tool_call_id answers."""
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
    if message.get("reasoning"):
        out["thinking"] = message["reasoning"]
    if message.get("tool_calls"):
        out["tool_calls"] = [_tool_call(call) for call in _list(message, "tool_calls")]
    call_id = message.get("tool_call_id")
    if isinstance(out["role"], str) and out["role"].lower() == "tool":
        name = message.get("name") or (call_id and _tool_name(messages, call_id))
        if name:
            out["tool_name"] = name
    if call_id:
        out["tool_call_id"] = call_id
    return out


def _tool_name(messages, call_id):
    """The name of the function the call `call_id` named (the last one, if ids repeat)."""
    for message in reversed(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict) and call.get("id") == call_id:
                return (call.get("function") or {}).get("name")
    return None


def _tool_call(call):
    """An OpenAI tool call ({id, function: {name, arguments: JSON text}}) as Ollama's; the
    arguments keep their key order."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ApiError(400, "invalid tool_calls: each needs a function with a name")
    parsed = tool_arguments(function.get("arguments"), "invalid tool call arguments")
    out = {"function": {"name": function["name"], "arguments": parsed}}
    return {"id": call["id"], **out} if call.get("id") else out


def tool_arguments(text, error):
    """A tool call's arguments, sent as JSON text (empty: none), as the object Ollama keeps
    (key order kept); anything else is a 400 saying `error`."""
    text = text or "{}"
    try:
        parsed = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ApiError(400, error)
    return parsed


def _options(body):
    """OpenAI's sampling fields as Ollama's options; Ollama's /v1 defaults temperature and
    top_p to 1.0 (OpenAI's), not to its native 0.8 and 0.9."""
    options = {ours: body[theirs] for theirs, ours in OPTION_NAMES.items()
               if body.get(theirs) is not None}
    stop = options.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = [s for s in stop if isinstance(s, str)]
    return {"temperature": 1.0, "top_p": 1.0, **options}


# reasoning_effort (or reasoning.effort) -> think (openai.thinkFromReasoningEffort)
EFFORTS = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
           "max": "max", "xhigh": "max", "ultra": "max"}


def think(body):
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
    if effort in (None, ""):
        return {}
    if not isinstance(effort, str) or effort not in EFFORTS:
        raise ApiError(400, f"invalid reasoning value: {json.dumps(effort)} (must be "
                            '"minimal", "low", "medium", "high", "xhigh", "ultra", "max", or '
                            '"none")')
    return {"think": EFFORTS[effort]}


def _go_int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


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

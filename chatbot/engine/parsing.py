"""Request bodies read the way Ollama's Go handlers read them, with the same error texts."""
import json

from flask import current_app, request

from .ollama_format import ApiError


def engine():
    return current_app.extensions["chatbot_engine"]


def _go_kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "value")


def read_body(go_type):
    """The JSON object of the request; `go_type` names the Go struct in error messages."""
    raw = request.get_data(cache=False)
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            raise ApiError(400, "unexpected EOF") from None
        raise ApiError(400, f"invalid character {text[exc.pos]!r} looking for beginning of "
                            "value") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"json: cannot unmarshal {_go_kind(body)} into Go value of type "
                            f"api.{go_type}")
    return body


def typed(body, key, kind, go_type, struct):
    """body[key] when absent, null or of the expected Python type(s); a 400 otherwise."""
    value = body.get(key)
    if value is not None and (not isinstance(value, kind) or
                              (isinstance(value, bool) and bool not in _as_tuple(kind))):
        raise ApiError(400, f"json: cannot unmarshal {_go_kind(value)} into Go struct field "
                            f"{struct}.{key} of type {go_type}")
    return value


def _as_tuple(kind):
    return kind if isinstance(kind, tuple) else (kind,)


def require_model(body, struct, legacy_name=False):
    """The ModelFile named by body["model"] (or the legacy "name"): 400 if none, 404 if unknown."""
    name = typed(body, "model", str, "string", struct) or ""
    if not name and legacy_name:
        name = typed(body, "name", str, "string", struct) or ""
    if not name.strip():
        raise ApiError(400, "model is required")
    registry = engine().registry
    model = registry.resolve(name)
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    try:
        registry.info(model)
    except (OSError, ValueError) as exc:  # the server's fault, but no traceback to log
        registry.unreadable(model, exc)
        raise ApiError(500, str(exc)) from None
    return name, model


def stream_flag(body, struct):
    """`stream` defaults to true when absent or null, as in Ollama."""
    value = typed(body, "stream", bool, "bool", struct)
    return True if value is None else value


def chat_messages(body):
    messages = typed(body, "messages", list, "[]api.Message", "ChatRequest") or []
    out = []
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError(400, f"json: cannot unmarshal {_go_kind(message)} into Go struct "
                                "field ChatRequest.messages of type api.Message")
        role = typed(message, "role", str, "string", "Message") or ""
        content = typed(message, "content", str, "string", "Message") or ""
        # Templates may read tool calls and names; everything else (images...) is dropped.
        extra = {k: message[k] for k in ("tool_calls", "tool_name", "name") if k in message}
        out.append({"role": role, "content": content, **extra})
    return out

"""Request bodies checked the way Ollama checks them, with its error texts."""
import json
import uuid

from flask import g, request

from chatbot.api import ApiError

ROLES = ("system", "user", "assistant", "tool")


def json_body(kind):
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"invalid JSON: {exc}")
    if not isinstance(body, dict):
        raise ApiError(400, f"json: cannot unmarshal {_go_type(body)} into Go value of type api.{kind}")
    return body


def model_name(body):
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "model is required")
    return model


def chat_messages(body):
    messages = body.get("messages")
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise ApiError(400, "json: cannot unmarshal " + _go_type(messages)
                       + " into Go struct field ChatRequest.messages of type []api.Message")
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError(400, "json: cannot unmarshal " + _go_type(message)
                           + " into Go struct field ChatRequest.messages of type api.Message")
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(400, f"invalid message role {role!r}: must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content", ""), str):
            raise ApiError(400, "json: cannot unmarshal " + _go_type(message["content"])
                           + " into Go struct field Message.messages.content of type string")
    return messages


def prompt_messages(body):
    """What a generate request adds to its session: optional system, then the prompt."""
    prompt, system = body.get("prompt") or "", body.get("system") or ""
    for name, value in (("prompt", prompt), ("system", system)):
        if not isinstance(value, str):
            raise ApiError(400, "json: cannot unmarshal " + _go_type(value)
                           + f" into Go struct field GenerateRequest.{name} of type string")
    if not prompt:
        return []  # an empty prompt only loads the model
    user = {"role": "user", "content": prompt}
    if body.get("images"):
        user["images"] = body["images"]
    return ([{"role": "system", "content": system}] if system else []) + [user]


def session_id(body):
    """The session named by body or header, normalised; a new one when none is named."""
    given = body.get("session_id") or request.headers.get("X-Session-ID")
    if not given:
        g.fresh_session = True  # nothing to look up: the session is made for this request
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(str(given)))
    except ValueError:
        raise ApiError(400, f"invalid session_id {given!r}: must be a UUID")


def stream_flag(body):
    stream = body.get("stream", True)  # Ollama streams unless told not to
    if not isinstance(stream, bool):
        raise ApiError(400, "json: cannot unmarshal " + _go_type(stream)
                       + " into Go struct field .stream of type bool")
    return stream


def _go_type(value):
    return {dict: "object", list: "array", str: "string", bool: "bool"}.get(
        type(value), "number" if isinstance(value, (int, float)) else "null")

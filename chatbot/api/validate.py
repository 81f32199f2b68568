"""Request bodies checked the way Ollama checks them, with its error texts."""
import base64
import binascii
import json
import re
import uuid

from flask import current_app, g, request

from chatbot.api import ApiError

ROLES = ("system", "user", "assistant", "tool")
CEILINGS = {"num_ctx": "MAX_NUM_CTX", "num_predict": "MAX_NUM_PREDICT"}
SURROGATE = re.compile("[\ud800-\udfff]")
# Ollama's option types (api.Options): a wrong type is refused before anything is queued.
INT_OPTIONS = ("num_ctx", "num_predict", "num_batch", "num_thread", "num_keep", "seed", "top_k",
               "repeat_last_n", "num_gpu", "main_gpu")
FLOAT_OPTIONS = ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty",
                 "presence_penalty", "frequency_penalty")


def json_body(kind):
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"invalid JSON: {exc}")
    except RecursionError:
        raise ApiError(400, "invalid JSON: nested too deeply")
    if not isinstance(body, dict):
        raise ApiError(400, f"json: cannot unmarshal {_go_type(body)} into Go value of type api.{kind}")
    return _valid_text(body)


def _valid_text(value):
    """Lone surrogates ("\\ud800") become U+FFFD, as Go's JSON decoder makes them, so that
    everything stored and sent is valid UTF-8. Iterative: nesting depth costs no stack."""
    root = [value]
    todo = [(root, 0)]
    while todo:
        holder, key = todo.pop()
        item = holder[key]
        if isinstance(item, str):
            holder[key] = _fix(item)
        elif isinstance(item, dict):
            holder[key] = item = {_fix(k): v for k, v in item.items()}
            todo.extend((item, k) for k in item)
        elif isinstance(item, list):
            todo.extend((item, i) for i in range(len(item)))
    return root[0]


def _fix(text):
    # json.loads joins valid pairs, so any surrogate left in a str stands alone.
    return text if text.isascii() else SURROGATE.sub("\ufffd", text)


def options(body, struct):
    """The request's `options`, checked for Ollama's types."""
    opts = body.get("options")
    if opts is None:
        return
    if not isinstance(opts, dict):
        raise ApiError(400, "json: cannot unmarshal " + _go_type(opts) + f" into Go struct field "
                       f"{struct}.options of type map[string]interface {{}}")
    for key, value in opts.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in INT_OPTIONS and not (number and float(value).is_integer()):
            raise ApiError(400, f"option \"{key}\" must be of type integer")
        if key in FLOAT_OPTIONS and not number:
            raise ApiError(400, f"option \"{key}\" must be of type float")
        if key in ("top_p", "min_p", "typical_p") and not 0 <= value <= 1:
            raise ApiError(400, f"option \"{key}\" must be between 0 and 1")
        if key == "stop" and not (isinstance(value, str) or (
                isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise ApiError(400, "option \"stop\" must be of type array of strings")
        ceiling = CEILINGS.get(key)
        if ceiling and value > current_app.config[ceiling]:
            raise ApiError(400, f"option \"{key}\" must be at most "
                                f"{current_app.config[ceiling]} ({ceiling})")


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
    if len(messages) > current_app.config["MAX_MESSAGES"]:
        raise ApiError(400, f"too many messages: {len(messages)} (at most "
                            f"{current_app.config['MAX_MESSAGES']} per request, MAX_MESSAGES)")
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
        _text_size("message content", message.get("content") or "")
        images(message.get("images"), "Message.messages.images")
        for field, kind, go in (("thinking", str, "string"), ("tool_name", str, "string"),
                                ("tool_calls", list, "[]api.ToolCall")):
            if message.get(field) is not None and not isinstance(message[field], kind):
                raise ApiError(400, f"json: cannot unmarshal {_go_type(message[field])} into Go "
                                    f"struct field Message.messages.{field} of type {go}")
        if not all(isinstance(call, dict) for call in message.get("tool_calls") or []):
            raise ApiError(400, "json: cannot unmarshal into Go struct field "
                                "Message.messages.tool_calls of type api.ToolCall")
    return messages


def _text_size(what, text):
    limit = current_app.config["MAX_MESSAGE_CHARS"]
    if len(text) > limit:
        raise ApiError(400, f"{what} too long: {len(text)} characters (at most {limit}, "
                            "MAX_MESSAGE_CHARS)")


def images(value, field):
    """Base64 strings, each within MAX_IMAGE_BYTES, as Ollama's []ImageData."""
    if value is None:
        return
    if not isinstance(value, list):
        raise ApiError(400, f"json: cannot unmarshal {_go_type(value)} into Go struct field "
                            f"{field} of type []api.ImageData")
    limit = current_app.config["MAX_IMAGE_BYTES"]
    for image in value:
        if not isinstance(image, str):
            raise ApiError(400, f"json: cannot unmarshal {_go_type(image)} into Go struct field "
                                f"{field} of type api.ImageData")
        try:
            size = len(base64.b64decode(image, validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(400, "illegal base64 data in images")
        if size > limit:
            raise ApiError(400, f"image too large: {size} bytes (at most {limit}, MAX_IMAGE_BYTES)")


def prompt_messages(body):
    """What a generate request adds to its session: optional system, then the prompt."""
    prompt, system = body.get("prompt") or "", body.get("system") or ""
    for name, value in (("prompt", prompt), ("system", system)):
        if not isinstance(value, str):
            raise ApiError(400, "json: cannot unmarshal " + _go_type(value)
                           + f" into Go struct field GenerateRequest.{name} of type string")
    _text_size("prompt", prompt)
    _text_size("system", system)
    images(body.get("images"), "GenerateRequest.images")
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


def resumable(body):
    """Whether the client opted in to its reply surviving a dropped connection: the
    `X-Resumable` header or `"resumable": true` in the body."""
    value = body.get("resumable")
    if value is None:
        value = request.headers.get("X-Resumable", "false").strip().lower()
        if value not in ("true", "false", "1", "0", ""):
            raise ApiError(400, f"invalid X-Resumable header {value!r}: must be true or false")
        return value in ("true", "1")
    if not isinstance(value, bool):
        raise ApiError(400, "json: cannot unmarshal " + _go_type(value)
                       + " into Go struct field .resumable of type bool")
    return value


def _go_type(value):
    return {dict: "object", list: "array", str: "string", bool: "bool"}.get(
        type(value), "number" if isinstance(value, (int, float)) else "null")

"""Request bodies checked the way Ollama checks them, with its error texts.

Its size is earned: one small function per Ollama rule, with Ollama's texts; the rules read
best side by side."""
import base64
import binascii
import json
import re
import uuid

from flask import current_app, g, request

from chatbot.ops import offload
from chatbot.api.errors import ApiError
from chatbot.engine import options as ollama_options, schema_limits

ROLES = ("system", "user", "assistant", "tool")
CEILINGS = {"num_ctx": "MAX_NUM_CTX", "num_predict": "MAX_NUM_PREDICT"}
MAX_STOP, MAX_STOP_CHARS = 16, 512  # stop sequences per request, characters in one
SURROGATE = re.compile("[\ud800-\udfff]")


BIG_BODY = 16 * 1024  # bytes past which a body is parsed off the web's loop (chatbot.ops.offload)
# A string (escapes kept whole) or a mark that starts a JSON value after the first.
COUNT_STEP = 1 << 20
VALUE_MARKS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[,\[{]')


def json_body(kind):
    raw = offload.body()
    if not raw or raw.isspace():
        raise ApiError(400, "missing request body")
    limit = current_app.config["MAX_JSON_VALUES"]
    if len(raw) <= BIG_BODY:
        return _parsed(raw, kind, limit)
    return offload.run(_parsed, raw, kind, limit)


def _parsed(raw, kind, limit):
    if json_values(raw, limit) > limit:
        raise ApiError(413, f"request body too large: more than {limit} JSON values "
                            "(MAX_JSON_VALUES)")
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"invalid JSON: {exc}")
    except RecursionError:
        raise ApiError(400, "invalid JSON: nested too deeply")
    if not isinstance(body, dict):
        raise ApiError(400, f"json: cannot unmarshal {_go_type(body)} into Go value of type api.{kind}")
    return _valid_text(body)


def json_values(raw, limit):
    """About how many values the JSON text holds, counted up to just past `limit`. json.loads
    holds the GIL for the whole parse (half a microsecond a value), whatever thread it runs
    in: a body of millions of tiny values is refused before it, not parsed. The quick count
    takes strings' commas for values too; only a body over the limit by it is counted again,
    outside strings."""
    quick = sum(raw.count(mark, start, start + COUNT_STEP) for start in range(0, len(raw), COUNT_STEP)
                for mark in (b",", b"[", b"{"))  # in steps: each holds the GIL a moment
    if quick <= limit:
        return quick
    values = 0
    for mark in VALUE_MARKS.finditer(raw):
        if mark.end() - mark.start() == 1:  # a mark, not a string
            values += 1
            if values > limit:
                break
    return values


def _no_constant(name):
    # Python reads NaN and Infinity; Go's decoder, and so Ollama, does not.
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


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
    """The request's `options`, read by Ollama's rules (chatbot.engine.options), within this
    server's ceilings; what goes upstream replaces them in `body` (nulls left out)."""
    opts = body.get("options")
    if opts is None:
        return
    if not isinstance(opts, dict):
        raise ApiError(400, "json: cannot unmarshal " + _go_type(opts) + f" into Go struct field "
                       f"{struct}.options of type map[string]interface {{}}")
    try:
        body["options"] = ollama_options.forwarded(opts)
    except ollama_options.OptionError as exc:
        raise ApiError(400, str(exc))
    for key, ceiling in CEILINGS.items():
        value = body["options"].get(key)
        if value is not None and value > current_app.config[ceiling]:
            raise ApiError(400, f"option \"{key}\" must be at most "
                                f"{current_app.config[ceiling]} ({ceiling})")
    stop = body["options"].get("stop") or ()
    if len(stop) > MAX_STOP or any(len(str(s)) > MAX_STOP_CHARS for s in stop):
        # each is checked after every token: a long list costs every other request's turn
        raise ApiError(400, f"option \"stop\" takes at most {MAX_STOP} sequences of at most "
                            f"{MAX_STOP_CHARS} characters")


THINK_LEVELS = ("high", "medium", "low", "max")
THINK_CHOICES = '"high", "medium", "low", "max", true, or false'


def turn_fields(body, struct):
    """Ollama's checks of a chat or generate request's own fields (api.ChatRequest,
    api.GenerateRequest): think, truncate, shift, logprobs, top_logprobs."""
    think = body.get("think")
    if isinstance(think, str) and think not in THINK_LEVELS:
        raise ApiError(400, f"invalid think value: {json.dumps(think)} (must be {THINK_CHOICES})")
    if think is not None and not isinstance(think, (bool, str)):
        raise ApiError(400, f"think must be a boolean or string ({THINK_CHOICES})")
    for field in ("truncate", "shift", "logprobs", "raw"):
        value = body.get(field)
        if value is not None and not isinstance(value, bool):
            raise ApiError(400, f"json: cannot unmarshal {_go_type(value)} into Go struct field "
                                f"{struct}.{field} of type bool")
    if body.get("_debug_render_only"):  # Ollama answers the prompt, not a turn to store
        raise ApiError(400, "_debug_render_only is not supported through chatbot: ask the "
                            "Ollama host itself")
    top = body.get("top_logprobs")
    if top is not None and not (_go_type(top) == "number" and top == int(top)):
        what = f"number {json.dumps(top)}" if _go_type(top) == "number" else _go_type(top)
        raise ApiError(400, f"json: cannot unmarshal {what} into Go struct field "
                            f"{struct}.top_logprobs of type int")
    if top is not None and not 0 <= top <= 20:
        raise ApiError(400, "top_logprobs must be between 0 and 20")


def format_(value):
    """Ollama's `format`: "json" or a JSON schema, within this server's bounds (a grammar
    built from an unbounded schema crashes llama.cpp)."""
    if not isinstance(value, dict):  # "json", or what the upstream answers for itself
        return
    try:
        current_app.config["FORMAT_BOUNDS"].check(value)
    except schema_limits.SchemaError as exc:
        raise ApiError(400, str(exc))


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
        if isinstance(role, str):  # Ollama lowercases roles (api.Message.UnmarshalJSON)
            role = message["role"] = role.lower()
        if role not in ROLES:
            raise ApiError(400, f"invalid message role {role!r}: must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content", ""), str):
            raise ApiError(400, "json: cannot unmarshal " + _go_type(message["content"])
                           + " into Go struct field Message.messages.content of type string")
        _text_size("message content", message.get("content") or "")
        images(message.get("images"), "Message.messages.images")
        for field, kind, go in (("thinking", str, "string"), ("tool_name", str, "string"),
                                ("tool_call_id", str, "string"),
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


def stream_flag(body, default=True):
    """`stream`, absent or null meaning the default (Ollama streams unless told not to)."""
    stream = body.get("stream")
    if stream is None:
        return default
    if not isinstance(stream, bool):
        raise ApiError(400, "json: cannot unmarshal " + _go_type(stream)
                       + " into Go struct field .stream of type bool")
    return stream


def branch(body):
    """`"branch": true` (chatbot's extension): the messages are the whole conversation, and a
    branch starts where they differ from the stored thread, even at its first message."""
    value = body.get("branch", False)
    if not isinstance(value, bool):
        raise ApiError(400, "json: cannot unmarshal " + _go_type(value)
                       + " into Go struct field .branch of type bool")
    return value


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

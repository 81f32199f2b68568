"""Request bodies read the way Ollama's Go handlers read them, with the same error texts."""
import base64
import binascii
import json
import math
import re

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


MAX_DEPTH = 100  # Go allows 10000; templates and grammars recurse over what we accept
TOO_DEEP = f"exceeded max depth: JSON nested more than {MAX_DEPTH} levels deep"
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _no_constant(name):
    # Python's json reads NaN and Infinity; JSON (and Go) has no such values.
    raise ApiError(400, f"invalid character {name[0]!r} looking for beginning of value")


def _finite(text):
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ApiError(400, f"json: cannot unmarshal number {text} into Go value of type "
                            "float64")
    return value


def _no_surrogates(text):
    return _SURROGATE.sub("\ufffd", text)


def _check_tree(body, fix_strings):
    """Refuse nesting deeper than MAX_DEPTH; with fix_strings, lone UTF-16 surrogates
    ("\\ud800", which Python's json keeps and UTF-8 cannot encode) become U+FFFD, as Go's
    decoder makes them. Iterative: a deep body must not exhaust our own stack."""
    stack = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, TOO_DEEP)
        keys = list(node) if isinstance(node, dict) else range(len(node))
        for key in keys:
            value = node[key]
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1))
            elif fix_strings and isinstance(value, str):
                node[key] = _no_surrogates(value)
            if fix_strings and isinstance(key, str) and _SURROGATE.search(key):
                node[_no_surrogates(key)] = node.pop(key)


def read_body(go_type):
    """The JSON object of the request; `go_type` names the Go struct in error messages."""
    raw = request.get_data(cache=False)
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            raise ApiError(400, "unexpected EOF") from None
        raise ApiError(400, f"invalid character {text[exc.pos]!r} looking for beginning of "
                            "value") from None
    except RecursionError:
        raise ApiError(400, TOO_DEEP) from None
    except ValueError:  # an integer of more than 4300 digits
        raise ApiError(400, "json: cannot unmarshal number: too many digits") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"json: cannot unmarshal {_go_kind(body)} into Go value of type "
                            f"api.{go_type}")
    _check_tree(body, fix_strings=bool(_MAYBE_SURROGATE.search(text)))
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


def integer(body, key, struct):
    """body[key] as Go decodes a JSON number into an `int` field (0 when absent or null)."""
    value = body.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = _go_kind(value)
    elif isinstance(value, float):
        kind = f"number {value:g}"  # Go refuses any number written with a fraction
    else:
        return value
    raise ApiError(400, f"json: cannot unmarshal {kind} into Go struct field {struct}.{key} "
                        "of type int")


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
        images(message, "ChatRequest.messages")  # checked, then dropped: no vision models
        # Templates may read tool calls and names; everything else is dropped.
        extra = {k: message[k] for k in ("tool_calls", "tool_name", "name") if k in message}
        out.append({"role": role, "content": content, **extra})
    return out


_BASE64 = re.compile(r"[A-Za-z0-9+/=]*")


def images(body, struct):
    """`images`: base64 strings, decoded the way Go decodes []byte from JSON."""
    found = typed(body, "images", list, "[]api.ImageData", struct) or []
    for image in found:
        if not isinstance(image, str):
            raise ApiError(400, f"json: cannot unmarshal {_go_kind(image)} into Go struct "
                                f"field {struct}.images of type api.ImageData")
        text = image.replace("\r", "").replace("\n", "")  # Go skips line breaks
        try:
            base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            at = _BASE64.match(text).end()
            raise ApiError(400, f"illegal base64 data at input byte {at}") from None
    return found


def context_ids(body):
    """GenerateRequest.context: token ids, integers as Go's []int decodes them. Whether
    they are in the model's vocabulary is checked once the model is loaded."""
    context = typed(body, "context", list, "[]int", "GenerateRequest") or []
    for token in context:
        if isinstance(token, bool) or not isinstance(token, int):
            kind = f"number {token}" if isinstance(token, float) else _go_kind(token)
            if token is None:
                kind = "null"
            raise ApiError(400, f"json: cannot unmarshal {kind} into Go struct field "
                                "GenerateRequest.context of type int")
    return context

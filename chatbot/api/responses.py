"""OpenAI's Responses API (/v1/responses) on the server's sessions and line.

A request is converted as Ollama converts it (openai/responses.go FromResponsesRequest) and
queued as a chat turn like any other. Unlike Ollama's, it keeps state: a response's turn is
stored in a session's thread, and `previous_response_id` continues that conversation while
the client sends only what is new (a response before the thread's newest, or another model,
starts a branch at it). A response is stored (`store`, on by default) once it ends, read back
by GET and removed by DELETE; `background: true` answers at once and the response runs on,
read by polling or by streaming it (`?stream=true&starting_after=N`), cancelled by POST
.../cancel. Another key's response is a 404, as its session is."""
import json
import logging
import threading
import time
import uuid

from flask import Blueprint, Response, current_app, g, request

from chatbot import line as lines
from chatbot.api import auth, openai, openai_wire, queue as requests_api, turns, validate
from chatbot.api.errors import ApiError
from chatbot.api.responses_wire import ResponsesWire
from chatbot.api.wire import dumps
from chatbot.line import admission, sweep
from chatbot.line.events import CHUNK, DONE, ERROR
from chatbot.ops import logs
from chatbot.redis_keys import stream_key
from chatbot.store import leading_system, responses as stored
from chatbot.upstream import UpstreamError

bp = Blueprint("responses", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)
# The line's states as a response's status, for one not kept (yet): an ended one is being kept,
# or was not to be (store false), or ended before its turn stored anything.
STATES = {"queued": "queued", "running": "in_progress", "done": "in_progress",
          "cancelled": "cancelled", "expired": "failed", "failed": "failed", "lost": "failed"}


@bp.errorhandler(ApiError)
@bp.errorhandler(UpstreamError)
def _error(exc):
    return openai_wire.failure(exc.status, exc.error)


@bp.post("/responses")
def create():
    body = validate.json_body("ResponsesRequest")
    model = validate.model_name(body)
    stream = validate.stream_flag(body, default=False)
    background, store = _flag(body, "background", False), _flag(body, "store", True)
    if background and not store:
        raise ApiError(400, "background responses must be stored: send store true")
    previous = body.get("previous_response_id")
    session_id, before = _conversation(body, previous, model)
    messages = (before or []) + _instructions(body, session_id, model, before) + _input(body)
    if not messages:
        raise ApiError(400, "invalid input: nothing to respond to")
    validate.chat_messages({"messages": messages})
    upstream_body = {"options": _options(body), **_format(body), **openai.think(body)}
    tools = _tools(body.get("tools"))
    if tools and body.get("tool_choice") != "none":
        upstream_body["tools"] = tools
    validate.options(upstream_body, "ChatRequest")
    validate.turn_fields(upstream_body, "ChatRequest")
    validate.format_(upstream_body.get("format"))
    # A response is new each time: its id is its request's, made here.
    g.request_id = str(uuid.uuid4())
    logs.bind(request_id=g.request_id)
    wire = ResponsesWire(model, "resp_" + g.request_id,
                         _echo(body, previous, session_id, background, store))
    if store:
        wire.on_end = _keeper(g.request_id, session_id, auth.key_name())
    if background:
        return _background(model, messages, upstream_body, session_id, wire, before is not None)
    return turns.turn("chat", model, messages, upstream_body, session_id, wire, stream,
                      validate.resumable(body), branch=before is not None, join=False)


@bp.get("/responses/<response_id>")
def retrieve(response_id):
    if request.args.get("stream", "").lower() == "true":
        return _stream_again(response_id, _count(request.args.get("starting_after")))
    row = _row(response_id)
    if row is not None:
        return _json(row.body)
    info = _in_line(response_id)
    if info["state"] == "done" and not info.get("wire"):  # ended, and not to be kept
        raise _not_found(response_id)
    return _json(_wire_of(info, response_id).response(STATES.get(info["state"], "failed")))


@bp.delete("/responses/<response_id>")
def delete(response_id):
    row = _row(response_id)
    if row is None:
        if _in_line(response_id, missing_ok=True):
            raise ApiError(400, f"Response with id '{response_id}' is still in progress: cancel "
                                f"it first (POST /v1/responses/{response_id}/cancel)")
        raise _not_found(response_id)
    stored.forget(row)
    return _json({"id": response_id, "object": "response.deleted", "deleted": True})


@bp.post("/responses/<response_id>/cancel")
def cancel(response_id):
    info = _in_line(response_id, missing_ok=True)
    if not info:
        if _row(response_id) is not None:
            raise ApiError(400, "Cannot cancel a response that has ended.")
        raise _not_found(response_id)
    admission.cancel(lines.get(), _request_id(response_id))
    return _json(_wire_of(info, response_id).response("cancelled"))


# Where a response's turn goes


def _conversation(body, previous, model):
    """(session id, the messages to send before the new input or None): the conversation the
    response continues, by `previous_response_id`, else by session (`conversation`, the
    X-Session-ID header), else a new one."""
    named = body.get("conversation")
    if isinstance(named, dict):
        named = named.get("id")
    if named is not None and not isinstance(named, str):
        raise ApiError(400, "invalid conversation: must be a session id")
    if previous is None:
        return validate.session_id({"session_id": named} if named else {}), None
    if not isinstance(previous, str):
        raise ApiError(400, "invalid previous_response_id: must be a string")
    row = _row(previous)
    if row is not None:
        return row.session_id, stored.continuation(row, model)
    # Not ended yet: its turn goes after it in its thread (one turn at a time per thread).
    return _in_line(previous, what="Previous response")["session_id"], None


def _instructions(body, session_id, model, before):
    """`instructions` as the turn's first message (system), unless the thread already begins
    with them (a client that sends the same instructions on every call)."""
    text = body.get("instructions")
    if text is None or text == "":
        return []
    if not isinstance(text, str):
        raise ApiError(400, "invalid instructions: must be a string")
    first = before[:1] if before is not None else (
        [] if g.get("fresh_session") else leading_system(session_id, model, limit=1))
    if first and first[0].get("role") == "system" and first[0].get("content") == text:
        return []
    return [{"role": "system", "content": text}]


def _input(body):
    """`input` (a string, or items: messages, function calls and their outputs, reasoning) as
    Ollama messages, as FromResponsesRequest makes them."""
    given = body.get("input")
    if given is None or given == "":
        return []
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if not isinstance(given, list):
        raise ApiError(400, "input must be a string or array")
    messages, thinking = [], ""
    for i, item in enumerate(given):
        if not isinstance(item, dict):
            raise ApiError(400, f"input[{i}]: must be an object")
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "reasoning":
            thinking = _text(item.get("encrypted_content"), f"input[{i}].encrypted_content")
        elif kind == "message":
            message = _message(item, i)
            if message["role"] == "assistant" and thinking:
                message["thinking"], thinking = thinking, ""
            messages.append(message)
        elif kind == "function_call":
            call = _function_call(item, i)
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            if thinking:
                messages[-1]["thinking"], thinking = thinking, ""
        elif kind == "function_call_output":
            content, images = _content(item.get("output"), f"input[{i}].output")
            messages.append({"role": "tool", "content": content,
                             "tool_call_id": _text(item.get("call_id"), f"input[{i}].call_id"),
                             **({"images": images} if images else {})})
        elif not kind:
            raise ApiError(400, f"input[{i}]: input item missing required 'type' field")
        else:
            raise ApiError(400, f"input[{i}]: unknown input item type: {json.dumps(kind)}")
    if thinking:
        messages.append({"role": "assistant", "content": "", "thinking": thinking})
    return messages


def _message(item, i):
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise ApiError(400, f"input[{i}]: invalid role {json.dumps(role)}: must be user, "
                            "assistant, system or developer")
    content, images = _content(item.get("content"), f"input[{i}].content")
    message = {"role": "system" if role == "developer" else role, "content": content}
    return {**message, "images": images} if images else message


def _content(content, where):
    """A string, or parts (input_text, output_text, input_image): (text, images)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: content must be a string or array")
    text, images = "", []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise ApiError(400, f"{where}[{j}]: must be an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            text += _text(part.get("text"), f"{where}[{j}].text")
        elif kind == "input_image":
            url = part.get("image_url")
            if url is None:
                continue  # a file_id: not supported, as in Ollama
            url = _text(url, f"{where}[{j}].image_url")
            if not url.startswith("data:"):
                raise ApiError(400, f"{where}[{j}]: only data URLs of images are supported")
            images.append(url.split("base64,", 1)[-1])
        elif kind == "input_file":
            raise ApiError(400, "file inputs are not currently supported")
        else:
            raise ApiError(400, f"{where}[{j}]: unknown content type: {json.dumps(kind)}")
    return text, images


def _function_call(item, i):
    name = _text(item.get("name"), f"input[{i}].name")
    arguments = item.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ApiError(400, f"input[{i}]: failed to parse function call arguments")
    call = {"function": {"name": name, "arguments": parsed}}
    call_id = item.get("call_id")
    return {"id": _text(call_id, f"input[{i}].call_id"), **call} if call_id else call


def _text(value, where):
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"invalid {where}: must be a string")
    return value


def _tools(tools):
    """Responses' flat function tools ({type, name, description, parameters}) as Ollama's;
    a namespace's members under its name (namespace.member)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ApiError(400, "invalid tools: must be an array")
    out = []
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise ApiError(400, "invalid tools: each needs a name")
        if tool.get("type") == "namespace":
            out += [{**t, "function": {**t["function"],
                                       "name": f"{tool['name']}.{t['function']['name']}"}}
                    for t in _tools(tool.get("tools") or [])]
            continue
        if tool.get("type") != "function":
            raise ApiError(400, f"unsupported tool type: {json.dumps(tool.get('type'))} (only "
                                "function tools are)")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise ApiError(400, f"invalid tool {tool['name']!r}: parameters must be an object")
        out.append({"type": "function", "function": {
            "name": tool["name"], "description": _text(tool.get("description"), "description"),
            "parameters": parameters or {}}})
    return out


def _options(body):
    """temperature (1.0 by default, OpenAI's), top_p, max_output_tokens as num_predict."""
    options = {"temperature": 1.0}
    for theirs, ours in (("temperature", "temperature"), ("top_p", "top_p"),
                         ("max_output_tokens", "num_predict"), ("seed", "seed")):
        if body.get(theirs) is not None:
            options[ours] = body[theirs]
    return options


def _format(body):
    text = body.get("text")
    if text is None:
        return {}
    if not isinstance(text, dict) or not isinstance(text.get("format") or {}, dict):
        raise ApiError(400, "invalid text: must be an object with an object format")
    fmt = text.get("format") or {}
    if fmt.get("type") == "json_schema" and fmt.get("schema") is not None:
        return {"format": fmt["schema"]}
    if fmt.get("type") == "json_object":
        return {"format": "json"}
    return {}


def _flag(body, name, default):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"invalid {name}: must be a boolean")
    return value


def _echo(body, previous, session_id, background, store):
    """What the response object repeats of its request."""
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else None
    fmt = (body.get("text") or {}).get("format")
    return {"created_at": int(time.time()),
            "instructions": body.get("instructions") or None, "previous_response_id": previous,
            "tools": body.get("tools") or [], "format": fmt or None,
            "temperature": body.get("temperature", 1.0) if body.get("temperature") is not None
            else 1.0, "top_p": body["top_p"] if body.get("top_p") is not None else 1.0,
            "max_output_tokens": body.get("max_output_tokens"),
            "reasoning": ({"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
                          if reasoning else None),
            "truncation": body.get("truncation") if isinstance(body.get("truncation"), str)
            else None, "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict)
            else {}, "background": background, "store": store, "conversation": session_id}


# Keeping and finding responses


def _keeper(request_id, session_id, owner):
    """What saves the response once it has ended, whoever sees it end."""
    app = current_app._get_current_object()

    def keep(body):
        try:
            with app.app_context():
                stored.save(body, request_id, session_id, owner)
        except Exception:  # the client still gets its response; it is only not kept
            log.exception("could not store response %s", body["id"])

    return keep


def _background(model, messages, upstream_body, session_id, wire, branch):
    """Queue it as a resumable request (a client may stream it later) and follow it here, in
    a thread of this process (whose lease keeps it wanted), until it ends and is kept."""
    request_id, queue = turns.submit("chat", model, messages, upstream_body, session_id,
                                     (wire, True), resumable=True, branch=branch)
    app = current_app._get_current_object()
    threading.Thread(target=_follow, args=(app, request_id, queue, wire), daemon=True,
                     name=f"response-{request_id}").start()
    resp = _json(wire.response("queued"))
    resp.headers.update({"X-Session-ID": session_id, "X-Request-ID": request_id})
    return resp


def _follow(app, request_id, queue, wire):
    """Read a background response's events as its client would, to its end."""
    with app.app_context():
        relay, line = app.extensions["relay"], lines.get()
        hub = relay.hub()
        waiter = hub.watch(request_id, again=True)
        hub.read([request_id])  # what is there already
        check = lambda started: sweep.verdict(line, request_id, queue)  # noqa: E731
        try:
            for event in relay.events(request_id, check=check, every=turns.LOOK_EVERY,
                                      waiter=waiter):
                if event["t"] == CHUNK:
                    wire.chunk(event["raw"])
                elif event["t"] == DONE:
                    wire.final(event)
                elif event["t"] == ERROR:
                    wire.failed(event["error"], "cancelled" if event["status"] == 499 else "failed")
        except Exception:
            log.exception("lost track of background response %s", request_id)


def _request_id(response_id):
    return response_id.removeprefix("resp_")


def _row(response_id):
    """The kept response, if the asking key may see it: else None, or a 404 once deleted
    (its id is not found again, even while the line still remembers its request)."""
    row = stored.get(response_id)
    if row is None or not auth.owns(row.owner):
        return None
    if row.status == stored.DELETED:
        raise _not_found(response_id)
    return row


def _in_line(response_id, missing_ok=False, what="Response"):
    """The line's record of a response not yet kept (waiting, running, or just ended)."""
    info = lines.get().info(_request_id(response_id)) if response_id.startswith("resp_") else {}
    if info and auth.owns(info.get("owner") or None):
        return info
    if missing_ok:
        return None
    raise _not_found(response_id, what)


def _not_found(response_id, what="Response"):
    return ApiError(404, f"{what} with id '{response_id}' not found.")


def _wire_of(info, response_id, starting_after=-1):
    """The response's wire as its request made it (kept by a resumable one), else a plain one."""
    if info.get("wire"):
        name, args, _stream = json.loads(info["wire"])
        if name == ResponsesWire.__name__:
            return ResponsesWire(*args, starting_after=starting_after)
    return ResponsesWire(info.get("model", ""), response_id, {"created_at": int(time.time())},
                         starting_after)


def _stream_again(response_id, starting_after):
    """A response's events again, after `starting_after`: live from its request's stream while
    that is kept, else told again from the stored response."""
    info = _in_line(response_id, missing_ok=True)
    rid = _request_id(response_id)
    if info and info.get("wire") and current_app.extensions["redis"].exists(stream_key(rid)):
        wire = _wire_of(info, response_id, starting_after)
        return requests_api.answer_again(rid, info, 0, wire)
    row = _row(response_id)
    if row is None:
        if info:
            raise ApiError(400, f"Response with id '{response_id}' was not created with "
                                "background true: it cannot be streamed again")
        raise _not_found(response_id)
    return Response(_told_again(row.body, starting_after), mimetype="text/event-stream")


def _told_again(body, starting_after):
    """A stored response's stream, from its output (one delta per item)."""
    echo = {**body, "format": body["text"]["format"],
            "conversation": (body.get("conversation") or {}).get("id")}
    wire = ResponsesWire(body["model"], body["id"], echo, starting_after)
    message = {"content": "", "thinking": "", "tool_calls": []}
    for item in body["output"]:
        if item["type"] == "reasoning":
            message["thinking"] += "".join(s["text"] for s in item.get("summary") or ())
        elif item["type"] == "message":
            message["content"] += "".join(c.get("text", "") for c in item.get("content") or ())
        elif item["type"] == "function_call":
            message["tool_calls"].append({"id": item["call_id"], "function": {
                "name": item["name"], "arguments": json.loads(item["arguments"] or "{}")}})
    usage = body.get("usage") or {}
    final = {"message": message, "prompt_eval_count": usage.get("input_tokens", 0),
             "eval_count": usage.get("output_tokens", 0),
             "done_reason": "length" if body["status"] == "incomplete" else "stop"}
    if body["status"] in ("completed", "incomplete"):
        yield wire.final({"d": final})
    else:
        yield wire.error_line((body.get("error") or {}).get("message") or body["status"])


def _count(text):
    if text is None or text == "":
        return -1
    if not text.isdigit() or len(text) > 9:
        raise ApiError(400, f"invalid starting_after {text!r}: must be a sequence number")
    return int(text)


def _json(obj):
    return Response(dumps(obj) + "\n", mimetype="application/json")

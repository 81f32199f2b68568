"""A Responses API request (/v1/responses) as Ollama's chat, as Ollama converts it
(openai/responses.go FromResponsesRequest): its input items as messages, its flat tools as
function tools, its sampling fields as options; and what its response repeats of it."""
import json
import time

from flask import g

from chatbot.api.errors import ApiError
from chatbot.api.openai import think, tool_arguments
from chatbot.store import leading_system


def chat(body, session_id, model, before):
    """(messages, the rest of the chat request) of a turn in `session_id` whose thread gets
    `before` (or nothing) ahead of the request's instructions and input."""
    messages = [*(before or []), *instructions(body, session_id, model, before),
                *input_messages(body)]
    if not messages:
        raise ApiError(400, "invalid input: nothing to respond to")
    upstream = {"options": options(body), **format_(body), **think(body)}
    given = tools(body.get("tools"))
    if given and body.get("tool_choice") != "none":
        upstream["tools"] = given
    return messages, upstream


def instructions(body, session_id, model, before):
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


def input_messages(body):
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
    parsed = tool_arguments(item.get("arguments"),
                            f"input[{i}]: failed to parse function call arguments")
    call = {"function": {"name": name, "arguments": parsed}}
    call_id = item.get("call_id")
    return {"id": _text(call_id, f"input[{i}].call_id"), **call} if call_id else call


def _text(value, where):
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"invalid {where}: must be a string")
    return value


def tools(given):
    """Responses' flat function tools ({type, name, description, parameters}) as Ollama's;
    a namespace's members under its name (namespace.member)."""
    if given is None:
        return []
    if not isinstance(given, list):
        raise ApiError(400, "invalid tools: must be an array")
    out = []
    for tool in given:
        if not isinstance(tool, dict):
            raise ApiError(400, "invalid tools: each must be an object")
        if tool.get("type") not in ("function", "namespace"):
            raise ApiError(400, f"unsupported tool type: {json.dumps(tool.get('type'))} (only "
                                "function tools are)")
        if not isinstance(tool.get("name"), str):
            raise ApiError(400, "invalid tools: each needs a name")
        if tool.get("type") == "namespace":
            out += [{**t, "function": {**t["function"],
                                       "name": f"{tool['name']}.{t['function']['name']}"}}
                    for t in tools(tool.get("tools") or [])]
            continue
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise ApiError(400, f"invalid tool {tool['name']!r}: parameters must be an object")
        out.append({"type": "function", "function": {
            "name": tool["name"], "description": _text(tool.get("description"), "description"),
            "parameters": parameters or {}}})
    return out


def options(body):
    """temperature (1.0 by default, OpenAI's), top_p, max_output_tokens as num_predict."""
    options = {"temperature": 1.0}
    for theirs, ours in (("temperature", "temperature"), ("top_p", "top_p"),
                         ("max_output_tokens", "num_predict"), ("seed", "seed")):
        if body.get(theirs) is not None:
            options[ours] = body[theirs]
    return options


def format_(body):
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


def flag(body, name, default):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"invalid {name}: must be a boolean")
    return value


def echo(body, previous, session_id, background, store):
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

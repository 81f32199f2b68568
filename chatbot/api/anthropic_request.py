"""Anthropic's Messages request read as Ollama's anthropic package reads it
(anthropic/anthropic.go FromMessagesRequest), with a clear 400 for what it cannot take:
wrong types, nulls, block types and server tools it does not have (chatbot.api.anthropic
serves it)."""
import json

from flask import current_app

from chatbot.api import ollama, validate
from chatbot.api.errors import ApiError
from chatbot.upstream import UpstreamError

# Anthropic request field -> Ollama option (max_tokens and stop_sequences apart).
OPTION_NAMES = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k"}
BLOCKS = ("text", "image", "tool_use", "tool_result", "thinking")
# What Ollama keeps of a tool's input_schema (api.ToolFunctionParameters).
SCHEMA_KEYS = ("type", "$defs", "items", "required", "properties")
EFFORTS = ("high", "medium", "low", "max")


def from_request(body):
    """FromMessagesRequest: (model, Ollama messages, the rest of the Ollama chat body)."""
    model = validate.model_name(body)
    max_tokens = body.get("max_tokens")
    if not _integer(max_tokens) or max_tokens <= 0:
        raise ApiError(400, "max_tokens is required and must be positive")
    messages = conversation(body)
    # Anthropic's clients must send max_tokens, and send big ones (Claude Code: 32000 and
    # more): a cap, so one past this server's ceiling is taken as the ceiling, not refused.
    options = {"num_predict": min(max_tokens, current_app.config["MAX_NUM_PREDICT"])}
    options.update({ours: body[theirs] for theirs, ours in OPTION_NAMES.items()
                    if body.get(theirs) is not None})
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise ApiError(400, "invalid stop_sequences: must be a list of strings")
    if stop:
        options["stop"] = stop
    upstream = {"options": options, **_think(model, body)}
    functions = function_tools(body.get("tools"))
    if functions:
        upstream["tools"] = functions
    _text(_object(body.get("tool_choice"), "tool_choice").get("type", ""), "tool_choice.type")
    # tool_choice is read, not used, as by Ollama: the model chooses
    _object(body.get("metadata"), "metadata")  # ignored
    return model, messages, upstream


def conversation(body):
    """The system prompt and messages as Ollama's messages, checked as /api/chat's are."""
    raw = body.get("messages")
    if not raw:
        raise ApiError(400, "messages is required")
    if not isinstance(raw, list):
        raise ApiError(400, "invalid messages: must be a list of messages")
    messages = _system(body.get("system"))
    for message in raw:
        messages += _message(message)
    if not any(m["role"] != "system" for m in messages):
        raise ApiError(400, "messages have no content to answer")
    return validate.chat_messages({"messages": messages})


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _item(value, name):
    """A list's item or a required field: an object, never null."""
    if not isinstance(value, dict):
        raise ApiError(400, f"invalid {name}: must be an object")
    return value


def _object(value, name):
    """An optional field: an object, or null for none."""
    if value is not None and not isinstance(value, dict):
        raise ApiError(400, f"invalid {name}: must be an object")
    return value or {}


def _text(value, name):
    if not isinstance(value, str):
        raise ApiError(400, f"invalid {name}: must be a string")
    return value


def _system(system):
    """A string, or text blocks joined; other blocks are skipped, as Ollama does."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise ApiError(400, "invalid system: must be a string or a list of text blocks")
    text = "".join(_text(block.get("text"), "system text block")
                   for block in (_item(b, "system block") for b in system)
                   if block.get("type") == "text")
    return [{"role": "system", "content": text}] if text else []


def _message(message):
    """convertMessage: one Anthropic message as Ollama's messages. A user's tool results come
    first, each a tool message; then its text, images, tool calls and thinking as one."""
    message = _item(message, "message")
    role = _text(message.get("role"), "message role").lower()
    content = message.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ApiError(400, "invalid message content: must be a string or a list of blocks")
    out = {"role": role, "content": ""}
    images, calls, results = [], [], []
    for block in content:
        block = _item(block, "content block")
        kind = block.get("type")
        if kind not in BLOCKS:
            raise ApiError(400, f"unsupported content block type {json.dumps(kind)}: "
                                f"supported are {', '.join(BLOCKS)}")
        if kind == "text":
            out["content"] += _text(block.get("text"), "text block's text")
        elif kind == "image":
            images.append(_image(block.get("source")))
        elif kind == "tool_use":
            calls.append(_tool_use(block))
        elif kind == "tool_result":
            results.append(_tool_result(block))
        elif kind == "thinking" and block.get("thinking") is not None:
            out["thinking"] = _text(block["thinking"], "thinking block's thinking")
    if images:
        out["images"] = images
    if calls:
        out["tool_calls"] = calls
    kept = [out] if out["content"] or images or calls or out.get("thinking") else []
    return results + kept if role == "user" else kept + results


def _image(source):
    source = _item(source, "image source")
    if source.get("type") != "base64":
        raise ApiError(400, f"invalid image source type: {source.get('type')}. Only base64 "
                            "images are supported.")
    return _text(source.get("data"), "image data")  # its base64 is checked with the messages


def _tool_use(block):
    for field in ("id", "name"):
        if not block.get(field):
            raise ApiError(400, f"tool_use block missing required '{field}' field")
        _text(block[field], f"tool_use {field}")
    arguments = _object(block.get("input"), "tool_use input")
    return {"id": block["id"], "function": {"name": block["name"], "arguments": arguments}}


def _tool_result(block):
    """convertToolResultContent: a string, or text blocks joined and images kept."""
    content, out = block.get("content"), {"role": "tool", "content": ""}
    if isinstance(content, str):
        out["content"] = content
    elif isinstance(content, list):
        images = []
        for part in (_item(p, "tool_result content block") for p in content):
            if part.get("type") == "text":
                out["content"] += _text(part.get("text"), "tool_result text")
            elif part.get("type") == "image":
                images.append(_image(part.get("source")))
        if images:
            out["images"] = images
    elif content is not None:
        raise ApiError(400, "invalid tool_result content: must be a string or a list of blocks")
    if block.get("tool_use_id") is not None:
        out["tool_call_id"] = _text(block["tool_use_id"], "tool_use_id")
    return out


def function_tools(tools):
    """convertTool: Anthropic's {name, description, input_schema} as Ollama's function tools.
    Server tools (web search and the like) are Anthropic's own: refused, not faked."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ApiError(400, "invalid tools: must be a list")
    out = []
    for tool in (_item(t, "tool") for t in tools):
        if tool.get("type") not in (None, "custom"):
            raise ApiError(400, f"tool type {json.dumps(tool['type'])} is not supported: only "
                                "custom tools ({name, description, input_schema})")
        name = _text(tool.get("name"), "tool name")
        schema = _object(tool.get("input_schema"), f"input_schema for tool {json.dumps(name)}")
        parameters = {"type": "object", "properties": {},
                      **{k: schema[k] for k in SCHEMA_KEYS if k in schema}}
        function = {"name": name, "parameters": parameters}
        if tool.get("description"):
            function["description"] = _text(tool["description"], "tool description")
        out.append({"type": "function", "function": function})
    return out


def _think(model, body):
    """thinking {type: enabled|disabled}, else output_config.effort, as Ollama's think. As
    Ollama does for this door (for Claude Code), thinking is dropped for a model that cannot
    think rather than refused."""
    thinking = _object(body.get("thinking"), "thinking")
    effort = _object(body.get("output_config"), "output_config").get("effort") or ""
    effort = _text(effort, "output_config.effort").strip().lower().replace("xhigh", "high")
    kind = _text(thinking.get("type", ""), "thinking.type")
    think = {"enabled": True, "disabled": False}.get(kind)
    if think is None and effort in EFFORTS:
        think = effort
    if think is None or (think and not _can_think(model)):
        return {}
    return {"think": think}


def _can_think(model):
    """Whether the model's host says it has the thinking capability (/api/show, kept briefly).
    When the host cannot tell, the request goes as asked and the host answers for itself."""
    try:
        status, _, data = ollama.model_info("POST", "/api/show", {"model": model},
                                            host=ollama.holder(model))
        capabilities = json.loads(data).get("capabilities") if status == 200 else None
    except (UpstreamError, ValueError, AttributeError):
        capabilities = None
    return capabilities is None or "thinking" in capabilities


def estimate(messages, upstream):
    """anthropic.EstimateInputTokens, Ollama's rough count (characters / 4) that message_start
    carries before the model has counted the prompt."""
    size = sum(len(m["role"]) + len(m["content"]) + len(m.get("thinking") or "")
               + len(json.dumps(m.get("tool_calls") or "")) for m in messages)
    size += len(json.dumps(upstream.get("tools") or ""))
    return max(1, size // 4)

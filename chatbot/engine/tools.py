"""Tools for chat models whose GGUF template renders none (SmolLM2's): the prompt as
Ollama's smollm2 library template builds it, and Ollama's generic tools parser
(tools/tools.go) reading the calls back out of the reply.

The library template is a Go template we cannot run; render() follows it step by step.
Its system prose is written in our own words here; everything a call's format depends on
(<tools>, <tool_call>[...]</tool_call>, <tool_response>, the turns) is as the template has it.
"""
import json

from .ollama_format import ApiError

# Ollama's parseTag gives "<tool_call>[" for this template (text after .ToolCalls, cut at
# "{"). Small models also write the Hermes form <tool_call>{...}; the tag without "["
# reads both, and a reply with no call in it is given back as content at the end.
TAG = "<tool_call>"
SYSTEM = (
    "You write function calls. For the question asked and the functions offered, make the "
    "one or more function/tool calls that achieve what it asks.\n"
    "If no function fits, say so and do not answer.\n"
    "If the question lacks parameters a function requires, say so too.\n"
    "The tools you can call:\n"
    "<tools>{tools}</tools>\n"
    "Answer only with calls in the format below, each parameter of the right type; when no "
    "call is needed, make it the empty list '[]'.\n"
    '<tool_call>[\n{{"name": "func_name1", "arguments": {{"argument1": "value1", '
    '"argument2": "value2"}}}},\n(more tool calls as required)\n]</tool_call>')


def library_template_applies(info):
    """A ChatML GGUF template without tools: Ollama's library template for such a model
    (smollm2) renders them."""
    template = info.chat_template
    return "<|im_start|>" in template and "tools" not in template


def uses_library_template(info, messages, tools):
    """Tools offered, or calls and results in the history: the GGUF template would drop them."""
    return library_template_applies(info) and bool(
        tools or any(m["role"] == "tool" or _calls(m) for m in messages))


def tag_for(info):
    """The tag a call starts with, or None when we do not know how the template writes
    calls (the reply then stays content, as before)."""
    if library_template_applies(info) or TAG in info.chat_template:
        return TAG
    return None


def go_json(value, sort_keys=False):
    """Go's json.Marshal text: compact, <, > and & escaped, integral floats as integers."""
    text = json.dumps(_integral(value), ensure_ascii=False, separators=(",", ":"),
                      sort_keys=sort_keys)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def _integral(value):
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _sorted(value):
    """An `any` field: Go decodes objects into maps, which marshal with sorted keys."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    return [_sorted(v) for v in value] if isinstance(value, list) else value


def _property(prop):
    """api.ToolProperty as Go marshals it: its fields only, in order, empty ones left out."""
    prop = prop if isinstance(prop, dict) else {}
    out = {}
    if prop.get("anyOf"):
        out["anyOf"] = [_property(p) for p in prop["anyOf"]]
    kind = prop.get("type")
    if kind:  # PropertyType: one type is a string
        out["type"] = kind[0] if isinstance(kind, list) and len(kind) == 1 else kind
    for key in ("items", "description", "enum"):
        if prop.get(key):
            out[key] = _sorted(prop[key])
    if isinstance(prop.get("properties"), dict):
        out["properties"] = {k: _property(v) for k, v in prop["properties"].items()}
    if prop.get("required"):
        out["required"] = prop["required"]
    return out


def _tool(tool):
    """template.go's templateTool: what `{{ .Tools }}` marshals for one tool."""
    if not isinstance(tool, dict):
        raise ApiError(400, "json: cannot unmarshal value into Go struct field "
                            "ChatRequest.tools of type api.Tool")
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else {}
    params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
    out_params = {"type": params.get("type") or ""}
    for key in ("$defs", "items", "required"):
        if params.get(key):
            out_params[key] = _sorted(params[key])
    props = params.get("properties")
    out_params["properties"] = None if not isinstance(props, dict) else \
        {k: _property(props[k]) for k in sorted(props)}  # a Go map: sorted
    out = {"type": tool.get("type") or ""}
    if tool.get("items"):
        out["items"] = _sorted(tool["items"])
    out["function"] = {"name": fn.get("name") or "", "description": fn.get("description") or "",
                       "parameters": out_params}
    return out


def _calls(message):
    calls = message.get("tool_calls")
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def _call_text(call):
    fn = call.get("function") if isinstance(call.get("function"), dict) else {}
    args = fn.get("arguments")
    if isinstance(args, str):  # OpenAI's form: a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            pass
    args = go_json(args if isinstance(args, dict) else {}, sort_keys=True)  # templateArgs
    return f'{{"name": "{fn.get("name") or ""}", "arguments": {args}}}'


def _collate(messages):
    """template.go's collate: consecutive messages of one role (tool results apart) merge."""
    out = []
    for m in messages:
        if out and out[-1]["role"] == m["role"] and m["role"] != "tool":
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append(m)
    return out


def render(messages, tools):
    """The prompt of Ollama's smollm2 library template. As there, the system prompt gives
    way to the tools when tools are offered, and system messages are no turn of their own."""
    tools = [_tool(t) for t in tools or []]
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    if tools:
        out = [f"<|im_start|>system\n{SYSTEM.format(tools=go_json(tools))}<|im_end|>\n"]
    else:  # the template writes no <|im_end|> here: neither do we
        out = [f"<|im_start|>system\n{system}\n"] if system else []
    messages = _collate(messages)
    for i, m in enumerate(messages):
        role, content, last = m["role"], m["content"], i == len(messages) - 1
        if role == "user":
            out.append(f"<|im_start|>user\n{content}<|im_end|>\n")
        elif role == "assistant":
            calls = _calls(m)
            out.append("<|im_start|>assistant\n")
            if content:
                out.append(content)
            elif calls:
                out.append("<tool_call>[\n" + "".join(map(_call_text, calls)) +
                           "\n]</tool_call>")
            if not last:
                out.append("<|im_end|>\n")
        elif role == "tool":
            out.append(f"<|im_start|>user\n<tool_response>\n{content}\n</tool_response>"
                       "<|im_end|>\n")
        if role != "assistant" and last:
            out.append("<|im_start|>assistant\n")
    return "".join(out)

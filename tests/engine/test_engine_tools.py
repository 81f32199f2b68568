"""Tools on the bundled model, as Ollama serves smollm2: its library template renders them
(SmolLM2's GGUF template has none), and Ollama's tools parser reads the calls back.
The model is tiny: no test asks it to choose a tool, only that requests round-trip; the
end-to-end call comes from a one-shot history that greedy decoding copies."""
import json
import re
from types import SimpleNamespace

import pytest
import requests

from chatbot.engine.tools import library_template_applies, render, tag_for
from chatbot.engine.toolcalls import Parser

from .conftest import GREEDY, MODEL

ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two <small> numbers",
    "parameters": {"type": "object", "required": ["a", "b"], "additionalProperties": False,
                   "properties": {"b": {"type": "integer", "description": "second"},
                                  "a": {"type": ["integer"], "default": 0}}}}}
CALL = '<tool_call>{"name": "add", "arguments": {"b": 1, "a": 2}}</tool_call>'
SHOT = '<tool_call>[\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n]</tool_call>'
CALL_ID = re.compile(r"call_[a-z0-9]{8}")


def read(text, size, tools=(ADD,)):
    """(calls, content) of `text` fed to a parser `size` characters at a time."""
    parser, calls, content = Parser(list(tools), "<tool_call>"), [], ""
    for i in range(0, len(text), size):
        found, piece = parser.add(text[i:i + size])
        calls, content = calls + found, content + piece
    return calls, content + parser.finish()


def test_render_puts_the_tools_in_the_system_turn():
    prompt = render([{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "2+1?"}], [ADD])
    system, rest = prompt.split("<|im_end|>\n", 1)
    assert system.startswith("<|im_start|>system\n")
    # {{ .Tools }}: Go's json.Marshal of Ollama's templateTool (known fields only, top-level
    # properties sorted, one type as a string, <> escaped)
    assert ('<tools>[{"type":"function","function":{"name":"add","description":'
            '"Add two \\u003csmall\\u003e numbers","parameters":{"type":"object","required":'
            '["a","b"],"properties":{"a":{"type":"integer"},"b":{"type":"integer",'
            '"description":"second"}}}}}]</tools>') in system
    assert system.endswith('(more tool calls as required)\n]</tool_call>')
    assert "Be brief." not in prompt  # as in the library template: tools replace .System
    assert rest == "<|im_start|>user\n2+1?<|im_end|>\n<|im_start|>assistant\n"


def test_history_with_calls_and_results_renders():
    history = [{"role": "user", "content": "Add 2 and 1."},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"function": {"name": "add", "arguments": {"b": 1, "a": 2.0}}},
                   {"function": {"name": "add", "arguments": '{"a": 5, "b": 5}'}}]},
               {"role": "tool", "content": "3", "tool_name": "add"},
               {"role": "tool", "content": "10", "tool_name": "add"},
               {"role": "user", "content": "Thanks."}]
    prompt = render(history, [ADD])
    assert prompt.split("<|im_end|>\n", 2)[2] == (
        '<|im_start|>assistant\n<tool_call>[\n{"name": "add", "arguments": {"a":2,"b":1}}'
        '{"name": "add", "arguments": {"a":5,"b":5}}\n]</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n10\n</tool_response><|im_end|>\n"
        "<|im_start|>user\nThanks.<|im_end|>\n<|im_start|>assistant\n")
    # Without tools offered, the history still renders (the GGUF template would lose it).
    assert render(history, None).startswith("<|im_start|>user\nAdd 2 and 1.<|im_end|>\n"
                                            "<|im_start|>assistant\n<tool_call>[\n")


def test_which_templates_get_the_library_tools():
    smol = SimpleNamespace(chat_template="{{'<|im_start|>' + message['role']}}")
    own = SimpleNamespace(chat_template="<|im_start|>{% if tools %}<tool_call>{% endif %}")
    other = SimpleNamespace(chat_template="[INST] {{ messages }}")
    assert library_template_applies(smol) and not library_template_applies(own)
    assert not library_template_applies(other)
    assert (tag_for(smol), tag_for(own), tag_for(other)) == ("<tool_call>", "<tool_call>", None)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 11, 13, len(CALL)])
def test_parser_reads_a_call_split_anywhere(size):
    calls, content = read("Sure: " + CALL, size)
    assert calls == [{"function": {"index": 0, "name": "add", "arguments": {"b": 1, "a": 2}}}]
    assert list(calls[0]["function"]["arguments"]) == ["b", "a"]  # the model's key order
    assert content == "Sure: "


def test_parser_reads_every_call_of_the_list_form():
    calls, content = read(SHOT.replace("\n]", ', {"name": "add", "parameters": {"a": 7}}\n]'), 3)
    assert [(c["function"]["index"], c["function"]["arguments"]) for c in calls] == \
        [(0, {"a": 2, "b": 3}), (1, {"a": 7})]
    assert content == ""  # what follows a call is not content, as in Ollama


@pytest.mark.parametrize("text", [
    "Plain text, with < and > and {json: 1} and add(2, 3).",
    "x <tool_", "<tool_call>{not json}</tool_call>", '<tool_call>{"name": "sub"}</tool_call>',
])
def test_parser_leaves_other_text_as_content(text):
    for size in (1, 4, len(text)):
        assert read(text, size) == ([], text)


def test_parser_holds_back_only_a_possible_tag():
    parser = Parser([ADD], "<tool_call>")
    assert parser.add("a <b> c <tool") == ([], "a <b> c ")
    assert parser.add("box") == ([], "<toolbox")


def test_request_with_tools_is_accepted(engine):
    for url in ("/api/show", "/api/tags"):
        models = requests.post(engine + url, json={"model": MODEL}).json() if url == "/api/show" \
            else next(m for m in requests.get(engine + url).json()["models"] if m["name"] == MODEL)
        assert models["capabilities"] == ["completion", "tools"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2 plus 3?"}],
            "tools": [ADD], "options": {**GREEDY, "num_predict": 8}}
    r = requests.post(engine + "/api/chat", json={**body, "stream": False})
    assert r.status_code == 200 and r.json()["done"], r.text
    lines = [json.loads(line) for line in requests.post(engine + "/api/chat", json=body).text
             .splitlines()]
    assert lines[-1]["done"] and lines[-1]["done_reason"] in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_comes_back_as_tool_calls(engine, client, stream):
    messages = [{"role": "user", "content": "Add 2 and 3."},
                {"role": "assistant", "content": SHOT},
                {"role": "user", "content": "Add 4 and 5."}]
    body = {"model": MODEL, "messages": messages, "tools": [ADD], "stream": stream,
            "options": GREEDY}
    lines = [json.loads(line) for line in requests.post(engine + "/api/chat", json=body).text
             .splitlines()]
    final, calls = lines[-1], [c for line in lines for c in line["message"].get("tool_calls", [])]
    assert final["done"] and final["done_reason"] == "stop"
    assert [c["function"] for c in calls] == [{"index": 0, "name": "add",
                                               "arguments": {"a": 4, "b": 5}}]
    assert CALL_ID.fullmatch(calls[0]["id"])
    assert "".join(line["message"]["content"] for line in lines) == ""
    if stream:  # Ollama's chunk: the calls, empty content; then the final chunk
        assert lines[-2]["message"] == {"role": "assistant", "content": "",
                                        "tool_calls": calls} and not lines[-2]["done"]
    # The official client reads it, and the call goes back in the history with its result.
    reply = client.chat(model=MODEL, messages=messages, tools=[ADD], options=GREEDY).message
    assert reply.tool_calls[0].function.name == "add"
    again = client.chat(model=MODEL, tools=[ADD], options={**GREEDY, "num_predict": 8},
                        messages=[*messages, reply, {"role": "tool", "content": "9",
                                                     "tool_name": "add"}])
    assert again.done

"""Ollama's 2025-26 fields through chatbot: logprobs streamed and stored, tool calls with
their ids and arguments' key order, truncate and too-long refusals, OpenAI /v1 chunk shapes
as Ollama's compatibility layer writes them."""
import json
import uuid

import pytest
import requests

from chatbot.flow.window import RATIOS
from tests.conftest import MODEL, OPTIONS

HI = [{"role": "user", "content": "Hi"}]


def chat(stack, body, sid=None):
    return requests.post(stack.url + "/api/chat", timeout=120, json={
        "model": MODEL, "messages": HI, "options": OPTIONS, "session_id": sid, **body})


def ndjson(resp):
    return [json.loads(line) for line in resp.text.splitlines() if line]


def test_logprobs_are_streamed_whole_when_not_streamed_and_stored_with_the_reply(stack):
    sid = str(uuid.uuid4())
    streamed = ndjson(chat(stack, {"logprobs": True, "top_logprobs": 2}, sid))
    pieces = [lp for chunk in streamed[:-1] for lp in chunk.get("logprobs") or []]
    assert len(pieces) == OPTIONS["num_predict"]
    assert all(len(p["top_logprobs"]) == 2 and p["logprob"] <= 0 for p in pieces)
    assert "".join(p["token"] for p in pieces) == "".join(
        c["message"]["content"] for c in streamed[:-1])
    stored = stack.rows(sid)[-1]
    assert stored.extra["logprobs"] == pieces  # kept with the reply, in its order
    whole = chat(stack, {"logprobs": True, "top_logprobs": 2, "stream": False}).json()
    assert whole["logprobs"] == pieces  # temperature 0: the same tokens
    keys = list(whole)
    assert keys.index("done_reason") < keys.index("logprobs") < keys.index("total_duration")


def test_logprobs_are_never_sent_back_upstream(stack):
    sid = str(uuid.uuid4())
    chat(stack, {"logprobs": True, "stream": False}, sid)
    again = chat(stack, {"stream": False, "messages": [{"role": "user", "content": "More"}]}, sid)
    assert again.status_code == 200 and "logprobs" not in again.json()


def test_tool_calls_keep_their_ids_and_argument_order(stack):
    sid = str(uuid.uuid4())
    call = {"id": "call_7", "function": {"index": 0, "name": "add",
                                         "arguments": {"z": 1, "a": 2, "m": {"y": 1, "b": 2}}}}
    messages = [{"role": "user", "content": "Add them"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "3", "tool_name": "add", "tool_call_id": "call_7"}]
    assert chat(stack, {"messages": messages, "stream": False}, sid).status_code == 200
    rows = stack.rows(sid)
    assert rows[1].extra["tool_calls"] == [call]
    assert list(rows[1].extra["tool_calls"][0]["function"]["arguments"]) == ["z", "a", "m"]
    assert rows[2].extra == {"tool_name": "add", "tool_call_id": "call_7"}
    shown = requests.get(f"{stack.url}/api/sessions/{sid}", timeout=10).text
    assert '"arguments":{"z":1,"a":2,"m":{"y":1,"b":2}}' in shown.replace(" ", "")


def test_a_clients_truncate_false_gets_ollamas_refusal_not_a_shorter_history(stack):
    sid = str(uuid.uuid4())
    small = {**OPTIONS, "num_ctx": 256}
    for i in range(6):
        text = f"Fact {i}: the ocean's tides follow the moon, and its currents carry heat."
        reply = chat(stack, {"messages": [{"role": "user", "content": text}],
                             "options": small, "stream": False}, sid)
        assert reply.status_code == 200
    refused = chat(stack, {"messages": [{"role": "user", "content": "And?"}],
                           "options": small, "stream": False, "truncate": False}, sid)
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("the prompt is longer than the context length")
    assert "And?" not in [r.content for r in stack.rows(sid)]


def test_a_context_the_upstream_refuses_as_too_long_is_sent_again_shorter(stack):
    """Calibration that undercounts the model's tokens (ratio 0.5: half of what they are)
    makes chatbot fill twice the window; the engine refuses (truncate: false), and chatbot
    leaves out more history until the upstream takes it."""
    alias = f"undercounted-{uuid.uuid4().hex[:6]}:latest"
    host = stack.env["OLLAMA_HOST"]
    assert requests.post(host + "/api/copy", json={"source": MODEL, "destination": alias},
                         timeout=30).status_code == 200
    calibration = stack.app.extensions["calibration"]
    sid, small = str(uuid.uuid4()), {**OPTIONS, "num_ctx": 512}
    try:
        for i in range(12):
            calibration.write(host, alias, (0.5, 0.0))  # each reply teaches it back
            reply = requests.post(stack.url + "/api/chat", timeout=120, json={
                "model": alias, "session_id": sid, "stream": False, "options": small,
                "messages": [{"role": "user", "content": f"{i}. The harbour wakes before the "
                              "town does: gulls argue over the nets, a ferry coughs awake."}]})
            assert reply.status_code == 200, reply.text
            assert reply.json()["prompt_eval_count"] < 512
        sent = [r for r in stack.rows(sid) if r.role == "user"]
        assert len(sent) == 12 and all(r.status == "ok" for r in sent)
    finally:
        calibration.redis.hdel(RATIOS, f"{host}|{alias}")
        requests.delete(host + "/api/delete", json={"model": alias}, timeout=30)


def sse_events(resp):
    return [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]


def v1_chat(stack, **body):
    return requests.post(stack.url + "/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": HI, "temperature": 0, "seed": 42, "max_tokens": 5, **body})


def test_v1_chat_stream_has_ollamas_chunk_shapes(stack):
    events = sse_events(v1_chat(stack, stream=True, stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content, finish, usage = chunks[:-2], chunks[-2], chunks[-1]
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in content[1:])
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert len({c["created"] for c in chunks}) == 1 and len({c["id"] for c in chunks}) == 1
    assert list(content[0]) == ["id", "object", "created", "model", "system_fingerprint",
                                "choices"]


def test_v1_chat_whole_answer_and_logprobs(stack):
    body = v1_chat(stack, logprobs=True, top_logprobs=1).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["role"] == "assistant"
    assert len(choice["logprobs"]["content"]) == 5
    assert body["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("effort, think", [("none", None), ("high", "refused")])
def test_v1_reasoning_effort_becomes_think(stack, effort, think):
    reply = v1_chat(stack, reasoning_effort=effort)
    if think is None:  # think: false, which a model that cannot think takes
        assert reply.status_code == 200
    else:
        assert reply.status_code == 400
        assert reply.json()["error"]["message"] == f'"{MODEL}" does not support thinking'
    bad = v1_chat(stack, reasoning_effort="extreme")
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith(
        'invalid reasoning value: "extreme"')


def test_v1_tool_messages_carry_ids_and_names(stack):
    sid = str(uuid.uuid4())
    messages = [{"role": "user", "content": "Add 1 and 2"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "add", "arguments": '{"b": 2, "a": 1}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "3"}]
    reply = requests.post(stack.url + "/v1/chat/completions", timeout=120,
                          headers={"X-Session-ID": sid},
                          json={"model": MODEL, "messages": messages, "max_tokens": 3})
    assert reply.status_code == 200, reply.text
    rows = stack.rows(sid)
    call = rows[1].extra["tool_calls"][0]
    assert call["id"] == "call_1" and list(call["function"]["arguments"]) == ["b", "a"]
    assert rows[2].extra == {"tool_name": "add", "tool_call_id": "call_1"}


def test_v1_embeddings_dimensions_and_base64(stack):
    url = stack.url + "/v1/embeddings"
    floats = requests.post(url, json={"model": "all-minilm", "input": "hi", "dimensions": 8},
                           timeout=60).json()["data"][0]["embedding"]
    assert len(floats) == 8 and abs(sum(x * x for x in floats) - 1) < 1e-4
    packed = requests.post(url, json={"model": "all-minilm", "input": "hi", "dimensions": 8,
                                      "encoding_format": "base64"}, timeout=60).json()
    import base64
    import struct

    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert struct.unpack("<8f", raw) == pytest.approx(floats, rel=1e-6)
    bad = requests.post(url, json={"model": "all-minilm", "input": "hi",
                                   "encoding_format": "hex"}, timeout=10)
    assert bad.status_code == 400 and "encoding_format" in bad.json()["error"]["message"]


def test_the_window_a_model_is_loaded_with_is_learned_from_ps(stack):
    """Ollama loads a model with its default context length (4k to 256k by VRAM), not the
    trained one /api/show names: after a refusal, the window comes from /api/ps."""
    from chatbot.flow.window import Windows
    from chatbot.upstream import Upstream

    host = stack.env["OLLAMA_HOST"]
    requests.post(host + "/api/generate", json={"model": MODEL, "options": {"num_ctx": 640}},
                  timeout=60)  # loaded with a window of its own
    windows, upstream = Windows(), Upstream(host)
    assert windows.length(upstream, MODEL) == 8192  # SmolLM2's trained context
    assert windows.learn_default(upstream, MODEL) == 640
    assert windows.length(upstream, MODEL) == 640
    assert windows.learn_default(upstream, "not-loaded:1b") is None

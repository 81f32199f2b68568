"""The Anthropic Messages door (POST /v1/messages) with the real anthropic SDK (pinned in
setup.cfg) against the stack: answers whole and streamed, tools both ways, system prompts,
sessions shared with the other doors, keys, refusals in Anthropic's error shape, models."""
import json
import uuid

import anthropic
import ollama
import openai
import pytest
import requests

from tests.conftest import MODEL
from tests.test_keys import A, B, keyed  # noqa: F401 (a fixture)

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
# temperature 0 is greedy decoding: the same prompt gives the same reply. The SDK (2.x) no
# longer has sampling parameters; the door still reads them (Claude Code and older SDKs send
# them), so they go as extra body fields.
GREEDY = {"temperature": 0}
SAMPLING = {"max_tokens": 12, "extra_body": GREEDY}
ADD = {"name": "add", "description": "Add two integers.",
       "input_schema": {"type": "object", "required": ["a", "b"],
                        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}
SID = "X-Session-ID"


@pytest.fixture
def client(stack):
    return anthropic.Anthropic(base_url=stack.url, api_key="local")


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def post(url, body, key=None, **headers):
    if key:
        headers["x-api-key"] = key
    return requests.post(url + "/v1/messages", json=body, timeout=120,
                         headers={"anthropic-version": "2023-06-01", **headers})


def test_a_message_whole(client):
    message = client.messages.create(model=MODEL, messages=QUESTION, **SAMPLING)
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == MODEL
    assert [b.type for b in message.content] == ["text"] and text_of(message)
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 12
    capped = client.messages.create(model=MODEL, messages=QUESTION, max_tokens=2,
                                    extra_body=GREEDY)
    assert capped.stop_reason == "max_tokens" and capped.usage.output_tokens == 2


def test_a_message_streamed_in_anthropic_events(client):
    whole = client.messages.create(model=MODEL, messages=QUESTION, **SAMPLING)
    with client.messages.stream(model=MODEL, messages=QUESTION, **SAMPLING) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e.delta.text for e in events if e.type == "content_block_delta"]
    assert "".join(deltas) == text_of(final) == text_of(whole)  # greedy: the same reply
    assert len(deltas) > 1 and final.id.startswith("msg_")
    # The SDK adds a `text` event of its own beside each delta (and skips pings).
    assert [e.type for e in events if e.type not in ("text", "content_block_delta")] == [
        "message_start", "content_block_start", "content_block_stop", "message_delta",
        "message_stop"]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_the_raw_stream_is_anthropic_sse(stack):
    resp = post(stack.url, {"model": MODEL, "messages": QUESTION, "stream": True, **SAMPLING})
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers[SID]
    lines = [line for line in resp.text.split("\n") if line]
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert events == [d["type"] for d in data]
    assert events[:3] == ["message_start", "ping", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert data[2]["content_block"] == {"type": "text", "text": ""}
    assert data[-2]["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert data[-2]["usage"]["output_tokens"] > 0


def test_a_system_prompt_reaches_the_model(client):
    plain = client.messages.create(model=MODEL, messages=QUESTION, **SAMPLING)
    told = client.messages.create(model=MODEL, messages=QUESTION, system="Answer in French.",
                                  **SAMPLING)
    blocks = client.messages.create(model=MODEL, messages=QUESTION, **SAMPLING,
                                    system=[{"type": "text", "text": "Answer in French."}])
    longer = client.messages.create(model=MODEL, messages=QUESTION, **SAMPLING,
                                    system="Answer in French, in one short sentence.")
    # (Without one, the model's template brings a default system prompt of its own.)
    assert text_of(told) != text_of(plain) and told.usage.input_tokens != plain.usage.input_tokens
    assert longer.usage.input_tokens > told.usage.input_tokens
    assert (blocks.usage.input_tokens, text_of(blocks)) == (told.usage.input_tokens,
                                                            text_of(told))


# One example of the model's own tool-call syntax: the small model then calls the tool itself
# (greedy decoding: always the same call).
SHOT = '<tool_call>[\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n]</tool_call>'
TOOL_QUESTION = [{"role": "user", "content": "Add 2 and 3."},
                 {"role": "assistant", "content": SHOT},
                 {"role": "user", "content": "Add 4 and 5."}]


def test_a_tool_round_trip(client):
    asked = client.messages.create(model=MODEL, messages=TOOL_QUESTION, tools=[ADD],
                                   max_tokens=60, extra_body=GREEDY)
    plain = client.messages.create(model=MODEL, messages=TOOL_QUESTION, max_tokens=60,
                                   extra_body=GREEDY)
    assert asked.usage.input_tokens > plain.usage.input_tokens  # the tool reached the model
    assert asked.stop_reason == "tool_use" and plain.stop_reason != "tool_use"
    [call] = asked.content
    assert (call.type, call.name, call.input) == ("tool_use", "add", {"a": 4, "b": 5})
    assert call.id
    # Streamed, the same call comes as input_json_delta, parsed by the SDK.
    with client.messages.stream(model=MODEL, messages=TOOL_QUESTION, tools=[ADD],
                                max_tokens=60, extra_body=GREEDY) as stream:
        deltas = [e.delta for e in stream if e.type == "content_block_delta"]
        streamed = stream.get_final_message()
    assert [d.type for d in deltas] == ["input_json_delta"]
    assert json.loads(deltas[0].partial_json) == {"a": 4, "b": 5}
    assert [(b.type, b.name, b.input) for b in streamed.content] == [
        ("tool_use", "add", {"a": 4, "b": 5})]
    assert streamed.stop_reason == "tool_use"
    # The result goes back as a tool_result block (a string, or blocks) and is answered.
    for content in ("9", [{"type": "text", "text": "9"}]):
        answered = client.messages.create(
            model=MODEL, tools=[ADD], max_tokens=12, extra_body=GREEDY, messages=[
                *TOOL_QUESTION, {"role": "assistant", "content": asked.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                              "content": content}]}])
        assert answered.content and answered.usage.output_tokens > 0
        assert answered.usage.input_tokens > asked.usage.input_tokens


def test_a_session_continued_by_header_and_on_the_other_doors(stack, client):
    first = client.messages.with_raw_response.create(model=MODEL, messages=QUESTION, **SAMPLING)
    sid = first.headers[SID]
    reply = first.parse()
    follow = [{"role": "user", "content": "And 3+3?"}]
    fresh = client.messages.create(model=MODEL, messages=follow, **SAMPLING)
    again = client.messages.with_raw_response.create(model=MODEL, messages=follow, **SAMPLING,
                                                     extra_headers={SID: sid})
    assert again.headers[SID] == sid
    assert again.parse().usage.input_tokens > fresh.usage.input_tokens  # the thread came too
    thread = requests.get(f"{stack.url}/api/sessions/{sid}", timeout=30).json()["messages"]
    assert [(m["role"], m["content"]) for m in thread] == [
        ("user", "What is 2+2?"), ("assistant", text_of(reply)), ("user", "And 3+3?"),
        ("assistant", text_of(again.parse()))]
    # The same session on Ollama's door and OpenAI's, then back here.
    ollama.Client(host=stack.url, headers={SID: sid}).chat(
        MODEL, messages=[{"role": "user", "content": "And 4+4?"}],
        options={"temperature": 0, "num_predict": 4})
    openai.OpenAI(base_url=stack.url + "/v1", api_key="local").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "And 5+5?"}], max_tokens=4,
        temperature=0, extra_headers={SID: sid})
    client.messages.create(model=MODEL, messages=[{"role": "user", "content": "And 6+6?"}],
                           max_tokens=4, extra_body=GREEDY, extra_headers={SID: sid})
    rows = stack.rows(sid)
    assert [m.content for m in rows if m.role == "user"] == [
        "What is 2+2?", "And 3+3?", "And 4+4?", "And 5+5?", "And 6+6?"]
    assert [m.role for m in rows] == ["user", "assistant"] * 5


def test_a_session_started_on_api_chat_continues_here(stack, client):
    started = requests.post(stack.url + "/api/chat", timeout=120, json={
        "model": MODEL, "messages": QUESTION, "stream": False,
        "options": {"temperature": 0, "num_predict": 4}})
    sid = started.json()["session_id"]
    follow = [{"role": "user", "content": "And 3+3?"}]
    fresh = client.messages.create(model=MODEL, messages=follow, **SAMPLING)
    here = client.messages.create(model=MODEL, messages=follow, **SAMPLING,
                                  extra_headers={SID: sid})
    assert here.usage.input_tokens > fresh.usage.input_tokens
    assert [m.role for m in stack.rows(sid)] == ["user", "assistant"] * 2


def test_keys_x_api_key_and_bearer(keyed):  # noqa: F811 (the fixture)
    _, url = keyed
    with_key = anthropic.Anthropic(base_url=url, api_key=A)  # sends x-api-key
    made = with_key.messages.with_raw_response.create(model=MODEL, messages=QUESTION,
                                                      max_tokens=3, extra_body=GREEDY)
    assert made.parse().content and made.headers[SID]
    bearer = anthropic.Anthropic(base_url=url, auth_token=A)  # Authorization: Bearer
    assert bearer.messages.create(model=MODEL, messages=QUESTION, max_tokens=3).content
    for key in (None, "wrong-key-0123456789"):
        refused = post(url, {"model": MODEL, "messages": QUESTION, "max_tokens": 3}, key)
        assert refused.status_code == 401
        assert refused.json() == {"type": "error", "error": {
            "type": "authentication_error", "message": "unauthorized"}}
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=url, api_key="nope").messages.create(
            model=MODEL, messages=QUESTION, max_tokens=3)
    with pytest.raises(anthropic.AuthenticationError) as listing:
        anthropic.Anthropic(base_url=url, api_key="nope").models.list()
    assert listing.value.body["error"]["type"] == "authentication_error"
    assert [m.id for m in with_key.models.list()]
    # x-api-key works on every route: it is how the key is read, not what this door reads.
    assert requests.get(url + "/api/tags", headers={"x-api-key": A}, timeout=30).ok
    # Another key's session does not exist.
    sid = made.headers[SID]
    theirs = post(url, {"model": MODEL, "messages": QUESTION, "max_tokens": 3}, B,
                  **{SID: sid})
    assert theirs.status_code == 404
    assert theirs.json()["error"] == {"type": "not_found_error",
                                      "message": f"session '{sid}' not found"}
    with pytest.raises(anthropic.NotFoundError):
        anthropic.Anthropic(base_url=url, api_key=B).messages.create(
            model=MODEL, messages=QUESTION, max_tokens=3, extra_headers={SID: sid})


TEXT = [{"role": "user", "content": "hi"}]
BAD = [
    ({"messages": TEXT, "max_tokens": 3}, "model is required"),
    ({"model": MODEL, "messages": TEXT}, "max_tokens is required"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 0}, "max_tokens is required"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": "3"}, "max_tokens is required"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": None}, "max_tokens is required"),
    ({"model": MODEL, "messages": [], "max_tokens": 3}, "messages is required"),
    ({"model": MODEL, "messages": "hi", "max_tokens": 3}, "invalid messages"),
    ({"model": MODEL, "messages": ["hi"], "max_tokens": 3}, "invalid message"),
    ({"model": MODEL, "messages": [{"role": "user"}], "max_tokens": 3}, "invalid message content"),
    ({"model": MODEL, "messages": [{"role": None, "content": "hi"}], "max_tokens": 3},
     "invalid message role"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 3},
     "invalid message role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 7}], "max_tokens": 3},
     "invalid message content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "document"}]}],
      "max_tokens": 3}, 'unsupported content block type "document"'),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"text": "hi"}]}],
      "max_tokens": 3}, "unsupported content block type null"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
      "max_tokens": 3}, "invalid text block's text"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]}],
      "max_tokens": 3}, "Only base64 images are supported"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "data": "not base64!"}}]}],
      "max_tokens": 3}, "illegal base64 data"),
    ({"model": MODEL, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "name": "add", "input": {}}]}], "max_tokens": 3},
     "tool_use block missing required 'id' field"),
    ({"model": MODEL, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "add", "input": [1]}]}], "max_tokens": 3},
     "invalid tool_use input"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": 4}]}], "max_tokens": 3},
     "invalid tool_result content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 1_000_001}],
      "max_tokens": 3}, "message content too long"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "system": 5}, "invalid system"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "system": [{"type": "text"}]},
     "invalid system text block"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "temperature": "hot"},
     'option "temperature" must be of type float32'),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "top_k": "many"},
     'option "top_k" must be of type integer'),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "stop_sequences": "\n"},
     "invalid stop_sequences"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "tools": {"name": "f"}}, "invalid tools"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "tools": [{"description": "f"}]},
     "invalid tool name"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3,
      "tools": [{"name": "f", "input_schema": "{}"}]}, 'invalid input_schema for tool "f"'),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3,
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     'tool type "web_search_20250305" is not supported'),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "tool_choice": "auto"},
     "invalid tool_choice"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "thinking": True}, "invalid thinking"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "thinking": {"type": ["enabled"]}},
     "invalid thinking.type"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "stream": "yes"}, "stream"),
    ({"model": MODEL, "messages": None, "max_tokens": 3}, "messages is required"),
    ({"model": MODEL, "messages": [None], "max_tokens": 3}, "invalid message: must be an object"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [None]}], "max_tokens": 3},
     "invalid content block: must be an object"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image"}]}],
      "max_tokens": 3}, "invalid image source: must be an object"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}],
      "max_tokens": 3}, "messages have no content to answer"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "thinking": {"type": "enabled"},
      "output_config": {"effort": 3}}, "invalid output_config.effort"),
    ({"model": MODEL, "messages": TEXT, "max_tokens": 3, "top_p": 2}, '"top_p"'),
    ([], "cannot unmarshal array"),
]


def test_a_claude_code_request_is_read_as_ollama_reads_it(stack):
    """anthropic.FromMessagesRequest's cases (anthropic_test.go), in one request."""
    from chatbot.api import anthropic_request

    body = {"model": MODEL, "max_tokens": 1024, "temperature": 1, "top_k": 5,
            "stop_sequences": ["END"], "metadata": {"user_id": "u"},
            "tool_choice": {"type": "auto"}, "output_config": {"effort": "xhigh"},
            "system": [{"type": "text", "text": "You are ", "cache_control": {"type": "x"}},
                       {"type": "text", "text": "Claude Code."}],
            "tools": [{"name": "Read", "description": "Read a file", "input_schema": {
                "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                "additionalProperties": False, "required": ["file_path"],
                "properties": {"file_path": {"type": "string"}}}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Look: "},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": "aGk="}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "tool_use", "id": "call_read", "name": "Read",
                     "input": {"file_path": "/a.png"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_read",
                     "content": [{"type": "text", "text": "Read image"},
                                 {"type": "image", "source": {"type": "base64",
                                                              "data": "aGk="}}]},
                    {"type": "text", "text": "Please describe it."}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "only"}]}]}
    with stack.app.test_request_context():
        model, messages, upstream = anthropic_request.from_request(body)
    assert messages == [
        {"role": "system", "content": "You are Claude Code."},
        {"role": "user", "content": "Look: ", "images": ["aGk="]},
        {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [
            {"id": "call_read", "function": {"name": "Read",
                                             "arguments": {"file_path": "/a.png"}}}]},
        {"role": "tool", "content": "Read image", "images": ["aGk="],
         "tool_call_id": "call_read"},
        {"role": "user", "content": "Please describe it."},
        {"role": "assistant", "content": "", "thinking": "only"}]
    assert upstream["options"] == {"num_predict": 1024, "temperature": 1, "top_k": 5,
                                   "stop": ["END"]}
    assert upstream["tools"] == [{"type": "function", "function": {
        "name": "Read", "description": "Read a file", "parameters": {
            "type": "object", "required": ["file_path"],
            "properties": {"file_path": {"type": "string"}}}}}]
    assert "think" not in upstream  # effort "high", dropped: smollm2 cannot think


def test_max_tokens_past_the_servers_ceiling_is_the_ceiling(stack):
    from chatbot.api import anthropic_request

    body = {"model": MODEL, "messages": TEXT, "max_tokens": 10 ** 9}
    with stack.app.test_request_context():
        _, _, upstream = anthropic_request.from_request(body)
    assert upstream["options"]["num_predict"] == stack.app.config["MAX_NUM_PREDICT"]


def test_limits_answer_in_anthropic_shape_with_retry_after(stack):
    limited = stack.app_with({"API_KEYS": f"alice={A}", "RATE_LIMIT": "1 per 10 seconds"})
    client = limited.test_client()
    body = {"model": MODEL, "messages": TEXT, "max_tokens": 0}  # refused after the limiter
    assert client.post("/v1/messages", json=body, headers={"x-api-key": A}).status_code == 400
    refused = client.post("/v1/messages", json=body, headers={"x-api-key": A})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.get_json()["error"]["type"] == "rate_limit_error"
    full = stack.app_with({"MAX_QUEUE": 0}).test_client().post("/v1/messages", json={
        "model": MODEL, "messages": QUESTION, "max_tokens": 3})
    assert full.status_code == 503 and int(full.headers["Retry-After"]) > 0
    assert full.get_json()["error"]["type"] == "overloaded_error"


def test_an_error_mid_stream_is_an_error_event(stack):
    rid = f"anthropic-{uuid.uuid4()}"
    body = {"model": MODEL, "stream": True, "max_tokens": 400, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long essay about the sea."}]}
    resp = requests.post(stack.url + "/v1/messages", json=body, stream=True, timeout=120,
                         headers={"X-Request-ID": rid})
    lines = resp.iter_lines(decode_unicode=True)
    seen = [next(lines) for _ in range(12)]  # the reply has begun
    assert seen[0] == "event: message_start"
    assert requests.delete(f"{stack.url}/api/queue/{rid}", timeout=30).status_code == 200
    rest = [line for line in lines if line]
    assert rest[-2:] == ["event: error", 'data: {"type":"error","error":{"type":"api_error",'
                                         '"message":"request cancelled"}}']
    assert resp.status_code == 200 and "event: message_stop" not in rest


@pytest.mark.parametrize("body,error", BAD, ids=[e for _, e in BAD])
def test_bad_input_is_a_400_in_anthropic_shape(stack, body, error):
    before = stack.count("messages")
    resp = post(stack.url, body)
    assert resp.status_code == 400, resp.text
    answer = resp.json()
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert error in answer["error"]["message"]
    assert SID not in resp.headers and stack.count("messages") == before  # nothing queued


def test_bad_json_and_wrong_routes_in_anthropic_shape(stack):
    broken = requests.post(stack.url + "/v1/messages", data="{", timeout=30,
                           headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    got = requests.get(stack.url + "/v1/messages", timeout=30)
    assert got.status_code == 405 and got.json()["error"]["type"] == "api_error"
    batches = requests.post(stack.url + "/v1/messages/batches", json={}, timeout=30)
    assert batches.status_code == 404 and batches.json()["error"] == {
        "type": "not_found_error", "message": "404 page not found"}


def test_count_tokens_is_an_estimate_with_nothing_queued(stack, client):
    before = stack.count("messages")
    short = client.messages.count_tokens(model=MODEL, messages=QUESTION)
    longer = client.messages.count_tokens(model=MODEL, messages=QUESTION, tools=[ADD],
                                          system="Answer in French.")
    assert 0 < short.input_tokens < longer.input_tokens
    assert stack.count("messages") == before
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model=MODEL, messages=[])


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model:1b", messages=QUESTION, max_tokens=3)
    assert "not found" in caught.value.body["error"]["message"]


def test_thinking_asked_of_a_model_that_cannot_is_dropped(client):
    plain = client.messages.create(model=MODEL, messages=QUESTION, **SAMPLING)
    thought = client.messages.create(model=MODEL, messages=QUESTION, **SAMPLING,
                                     thinking={"type": "enabled", "budget_tokens": 1024})
    assert text_of(thought) == text_of(plain)  # as Ollama does on this door, for Claude Code


def test_models_in_anthropic_shape(stack, client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids and all(m.type == "model" for m in models.data)
    assert models.data[0].created_at.year >= 2000
    raw = requests.get(stack.url + "/v1/models", headers={"anthropic-version": "2023-06-01"},
                       timeout=30).json()
    assert raw["has_more"] is False and raw["first_id"] == ids[0] and raw["last_id"] == ids[-1]
    one = client.models.retrieve(MODEL)
    assert (one.id, one.display_name, one.type) == (MODEL, MODEL, "model")
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.models.retrieve("no-such-model:1b")
    assert missing.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": "model 'no-such-model:1b' not found"}}
    # Without anthropic-version: OpenAI's shape, as before.
    openai_shape = requests.get(stack.url + "/v1/models", timeout=30).json()
    assert openai_shape["object"] == "list" and openai_shape["data"][0]["object"] == "model"


def test_a_resumable_reply_is_answered_again_in_anthropic_shape(stack):
    rid = f"anthropic-{uuid.uuid4()}"
    first = post(stack.url, {"model": MODEL, "messages": QUESTION, "stream": True,
                             "resumable": True, **SAMPLING}, **{"X-Request-ID": rid})
    assert first.status_code == 200 and first.headers["X-Resumable"] == "true"
    again = requests.get(f"{stack.url}/api/requests/{rid}/stream?after=0", timeout=60)
    assert again.status_code == 200, again.text
    first_events = [line for line in first.text.split("\n") if line.startswith("event: ")]
    again_events = [line for line in again.text.split("\n") if line.startswith("event: ")]
    assert again_events == first_events
    message_id = [json.loads(line[6:]) for line in first.text.split("\n")
                  if line.startswith("data: ")][0]["message"]["id"]
    assert f'"id":"{message_id}"' in again.text  # the same message, again

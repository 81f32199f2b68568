"""OpenAI's Responses API (/v1/responses) through the real openai SDK, against the bundled
engine: created streamed and not, kept and read back, continued by previous_response_id (the
model sees the stored history, the client sent only what is new), branched from an earlier
response, tool calls both ways, background with polling and a resumed stream, cancel, delete,
other keys, and bad input."""
import json
import time
import uuid

import openai
import pytest
import requests

from chatbot.api.responses_wire import ResponsesWire
from tests.conftest import MODEL
from tests.test_keys import A, B, keyed  # noqa: F401 (a fixture)

SAMPLING = {"temperature": 0, "max_output_tokens": 8, "extra_body": {"seed": 42}}
ENDED = ("completed", "incomplete")  # incomplete: it stopped at max_output_tokens


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="ollama")


def session_of(stack, response_id):
    with stack.app.app_context():
        from chatbot.store import responses
        return responses.get(response_id).session_id


def test_a_response_streamed_or_not_is_kept_and_read_back(stack, client):
    done = client.responses.create(model=MODEL, input="What is 2+2?", **SAMPLING)
    assert done.status in ENDED and done.output_text
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    assert done.id.startswith("resp_") and done.store is True
    again = client.responses.retrieve(done.id)
    assert again.output_text == done.output_text and again.status == done.status
    rows = stack.rows(session_of(stack, done.id))
    assert [(r.role, r.content) for r in rows] == [("user", "What is 2+2?"),
                                                    ("assistant", done.output_text)]

    events = list(client.responses.create(model=MODEL, input="What is 2+2?", stream=True,
                                          **SAMPLING))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == f"response.{done.status}"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == done.output_text  # same seed, same reply
    last = events[-1].response
    assert client.responses.retrieve(last.id).output_text == text


def test_previous_response_id_continues_the_stored_conversation(stack, client):
    first = client.responses.create(model=MODEL, input="My name is Ada.",
                                    instructions="Answer briefly.", **SAMPLING)
    second = client.responses.create(model=MODEL, input="What is my name?",
                                     previous_response_id=first.id,
                                     instructions="Answer briefly.", **SAMPLING)
    third = client.responses.create(model=MODEL, input="Say it again.",
                                    previous_response_id=second.id, **SAMPLING)
    assert third.previous_response_id == second.id
    sid = session_of(stack, third.id)
    assert sid == session_of(stack, first.id)
    rows = stack.rows(sid)
    # The same instructions again are not stored twice; the model saw everything stored.
    assert [r.role for r in rows] == ["system", "user", "assistant", "user", "assistant",
                                      "user", "assistant"]
    assert [r.content for r in rows if r.role == "user"] == [
        "My name is Ada.", "What is my name?", "Say it again."]
    alone = client.responses.create(model=MODEL, input="Say it again.", **SAMPLING)
    assert third.usage.input_tokens > second.usage.input_tokens > first.usage.input_tokens
    assert third.usage.input_tokens > alone.usage.input_tokens + 20


def test_an_earlier_response_continued_starts_a_branch(stack, client):
    first = client.responses.create(model=MODEL, input="Name a colour.", **SAMPLING)
    second = client.responses.create(model=MODEL, input="Name another.",
                                     previous_response_id=first.id, **SAMPLING)
    other = client.responses.create(model=MODEL, input="Name a fruit.",
                                    previous_response_id=first.id, **SAMPLING)
    # The model saw the first turn and the new question, not the second turn.
    assert abs(other.usage.input_tokens - second.usage.input_tokens) < 5
    sid = session_of(stack, other.id)
    page = requests.get(f"{stack.url}/api/sessions/{sid}", timeout=30).json()
    path = [m["content"] for m in page["messages"] if m["role"] == "user"]
    assert path == ["Name a colour.", "Name a fruit."]
    assert page["messages"][2]["siblings"]["count"] == 2
    # And the first branch still continues from its own response.
    back = client.responses.create(model=MODEL, input="And one more.",
                                   previous_response_id=second.id, **SAMPLING)
    page = requests.get(f"{stack.url}/api/sessions/{sid}", timeout=30).json()
    assert [m["content"] for m in page["messages"] if m["role"] == "user"] == [
        "Name a colour.", "Name another.", "And one more."]
    assert back.status in ENDED


ADD = {"type": "function", "name": "add", "description": "Add two integers.",
       "parameters": {"type": "object", "required": ["a", "b"],
                      "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}


def test_a_namespace_is_its_members_under_its_name(stack):
    from chatbot.api.responses_request import tools

    members = tools([{"type": "namespace", "name": "math", "tools": [ADD]},
                     {"type": "namespace", "name": "empty"}])
    assert [t["function"]["name"] for t in members] == ["math.add"]
    assert members[0]["function"]["parameters"] == ADD["parameters"]


def test_a_tool_round_trip(stack, client):
    asked = client.responses.create(model=MODEL, input="What is 2+3? Use the add tool.",
                                    tools=[ADD], **SAMPLING)
    plain = client.responses.create(model=MODEL, input="What is 2+3? Use the add tool.",
                                    **SAMPLING)
    assert asked.usage.input_tokens > plain.usage.input_tokens  # the tool reached the model
    assert asked.tools[0].name == "add"
    # The call and its result, as the SDK's user sends them back after running the tool.
    call = {"type": "function_call", "call_id": "call_1", "name": "add",
            "arguments": json.dumps({"a": 2, "b": 3})}
    result = {"type": "function_call_output", "call_id": "call_1", "output": "5"}
    answer = client.responses.create(model=MODEL, previous_response_id=asked.id,
                                     input=[call, result], tools=[ADD], **SAMPLING)
    assert answer.status in ENDED
    rows = stack.rows(session_of(stack, answer.id))
    assert [r.role for r in rows] == ["user", "assistant", "assistant", "tool", "assistant"]
    assert rows[2].extra["tool_calls"] == [{"id": "call_1", "function": {
        "name": "add", "arguments": {"a": 2, "b": 3}}}]
    assert rows[3].content == "5" and rows[3].extra["tool_call_id"] == "call_1"


def test_a_tool_call_from_the_model_is_a_function_call_item_streamed_or_not():
    # The wire on its own, fed what the worker relays: a model that calls a tool.
    reply = {"content": "", "tool_calls": [{"id": "call_x", "function": {
        "name": "add", "arguments": {"a": 2, "b": 3}}}]}
    final = {"done": True, "done_reason": "stop", "prompt_eval_count": 30, "eval_count": 9,
             "message": {"role": "assistant", "content": ""}}
    echo = {"created_at": 1, "tools": [ADD]}
    whole = json.loads(ResponsesWire(MODEL, "resp_1", echo).whole(
        {"d": final, "reply": reply}).get_data())
    assert whole["output"] == [{"id": "fc_1_0", "type": "function_call", "status": "completed",
                                "call_id": "call_x", "name": "add",
                                "arguments": '{"a":2,"b":3}'}]
    wire = ResponsesWire(MODEL, "resp_1", echo)
    text = wire.chunk(json.dumps({"message": reply})) + wire.final({"d": final})
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert events[-1]["response"]["output"] == whole["output"]


def test_background_responses_are_polled_streamed_again_and_cancelled(stack, client):
    queued = client.responses.create(model=MODEL, input="Count to five.", background=True,
                                     **SAMPLING)
    assert queued.status in ("queued", "in_progress") and queued.background is True
    deadline = time.time() + 60
    polled = client.responses.retrieve(queued.id)
    while polled.status not in ENDED and time.time() < deadline:
        time.sleep(0.2)
        polled = client.responses.retrieve(queued.id)
    assert polled.status in ENDED and polled.output_text
    # Streamed again from its start, and after a sequence number.
    events = list(client.responses.retrieve(queued.id, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        polled.output_text
    later = list(client.responses.retrieve(queued.id, stream=True, starting_after=3))
    assert [e.sequence_number for e in later] == [e.sequence_number for e in events][4:]

    # A long one, cancelled while it waits or runs.
    long = client.responses.create(model=MODEL, input="Write a long story.", background=True,
                                   temperature=0, max_output_tokens=400)
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled"
    deadline = time.time() + 30
    while client.responses.retrieve(long.id).status != "cancelled" and time.time() < deadline:
        time.sleep(0.2)
    assert client.responses.retrieve(long.id).status == "cancelled"


def test_delete_and_store_false(stack, client):
    kept = client.responses.create(model=MODEL, input="Hi there", **SAMPLING)
    deleted = client.responses.delete(kept.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="Hi", previous_response_id=kept.id, **SAMPLING)
    unkept = client.responses.create(model=MODEL, input="Hi there", store=False, **SAMPLING)
    assert unkept.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)


def test_another_keys_response_is_not_found(keyed):  # noqa: F811
    _, url = keyed
    alice = openai.OpenAI(base_url=url + "/v1", api_key=A)
    bob = openai.OpenAI(base_url=url + "/v1", api_key=B)
    mine = alice.responses.create(model=MODEL, input="Hi", **SAMPLING)
    for attempt in (lambda: bob.responses.retrieve(mine.id),
                    lambda: bob.responses.delete(mine.id),
                    lambda: bob.responses.create(model=MODEL, input="Hi",
                                                 previous_response_id=mine.id, **SAMPLING)):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert alice.responses.retrieve(mine.id).output_text == mine.output_text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="nope").responses.create(
            model=MODEL, input="Hi")


@pytest.mark.parametrize("body, message", [
    ({"input": 5}, "input must be a string or array"),
    ({"input": [5]}, "input[0]: must be an object"),
    ({"input": [{"content": "x"}]}, "missing required 'type'"),
    ({"input": [{"type": "web_search_call"}]}, "unknown input item type"),
    ({"input": [{"type": "message", "role": "robot", "content": "x"}]}, "invalid role"),
    ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "file inputs"),
    ({"input": [{"role": "user", "content": [{"type": "nope"}]}]}, "unknown content type"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{"}]}, "arguments"),
    ({"input": "Hi", "tools": [{"type": "web_search"}]}, "unsupported tool type"),
    ({"input": "Hi", "tools": [{"type": "function"}]}, "each needs a name"),
    ({"input": "Hi", "tools": [{"type": "file_search", "name": "x"}]}, "unsupported tool"),
    ({"input": "Hi", "previous_response_id": 3}, "previous_response_id"),
    ({"input": "Hi", "previous_response_id": "resp_nope"}, "not found"),
    ({"input": "Hi", "background": True, "store": False}, "must be stored"),
    ({"input": "Hi", "max_output_tokens": "many"}, "num_predict"),
    ({"input": "Hi", "text": "json"}, "invalid text"),
    ({"input": ""}, "nothing to respond to"),
    ({"input": "Hi", "stream": "yes"}, "stream"),
])
def test_bad_requests_are_openai_errors_before_anything_is_queued(stack, body, message):
    resp = requests.post(stack.url + "/v1/responses", json={"model": MODEL, **body}, timeout=30)
    assert resp.status_code in (400, 404), resp.text
    error = resp.json()["error"]
    assert message in error["message"] and error["type"]


def test_unknown_ids_and_bad_stream_positions(stack):
    missing = f"resp_{uuid.uuid4()}"
    for method, path in (("GET", missing), ("DELETE", missing), ("POST", missing + "/cancel")):
        resp = requests.request(method, f"{stack.url}/v1/responses/{path}", timeout=30)
        assert resp.status_code == 404 and "not found" in resp.json()["error"]["message"]
    resp = requests.get(f"{stack.url}/v1/responses/{missing}?stream=true&starting_after=x",
                        timeout=30)
    assert resp.status_code == 400


def test_a_conversation_moves_between_doors(stack, client):
    """Started on /v1/responses, continued on /api/chat and /v1/chat/completions, exported, and
    continued again from its first response (a branch: the other doors' turns stay aside)."""
    first = client.responses.create(model=MODEL, input="My name is Ada.", **SAMPLING)
    sid = first.conversation.id if first.conversation else session_of(stack, first.id)
    assert sid == session_of(stack, first.id)
    chat = requests.post(stack.url + "/api/chat", timeout=60, json={
        "model": MODEL, "session_id": sid, "stream": False,
        "options": {"temperature": 0, "seed": 42, "num_predict": 8},
        "messages": [{"role": "user", "content": "What is my name?"}]}).json()
    assert chat["prompt_eval_count"] > first.usage.input_tokens  # it saw the first turn
    done = openai.OpenAI(base_url=stack.url + "/v1", api_key="x").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Again?"}], max_tokens=8,
        temperature=0, extra_headers={"X-Session-ID": sid})
    assert done.usage.prompt_tokens > chat["prompt_eval_count"]
    export = requests.get(f"{stack.url}/api/sessions/{sid}/export", timeout=30).json()
    said = [m["content"] for m in export["threads"][MODEL] if m["role"] == "user"]
    assert said == ["My name is Ada.", "What is my name?", "Again?"]
    back = client.responses.create(model=MODEL, input="Tell me a fact.",
                                   previous_response_id=first.id, **SAMPLING)
    assert back.usage.input_tokens < done.usage.prompt_tokens
    page = requests.get(f"{stack.url}/api/sessions/{sid}", timeout=30).json()
    assert [m["content"] for m in page["messages"] if m["role"] == "user"] == [
        "My name is Ada.", "Tell me a fact."]


def test_an_ended_response_cannot_be_cancelled_and_an_unkept_one_is_not_in_progress(stack,
                                                                                   client):
    done = client.responses.create(model=MODEL, input="Hi", **SAMPLING)
    with pytest.raises(openai.BadRequestError, match="has ended"):
        client.responses.cancel(done.id)
    assert client.responses.retrieve(done.id).status in ENDED  # untouched
    unkept = client.responses.create(model=MODEL, input="Hi", store=False, **SAMPLING)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(unkept.id)

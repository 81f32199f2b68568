"""End to end: the official ollama client -> Flask -> Celery worker -> PocketFlow -> engine."""
import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import ollama
import pytest
import requests

from tests.conftest import MODEL, OPTIONS

QUESTION = {"role": "user", "content": "What is 2+2?"}


def client(stack, session_id):
    return ollama.Client(host=stack.url, headers={"X-Session-ID": session_id})


def new_session():
    return str(uuid.uuid4())


def test_chat_not_streamed_stores_the_turn(stack):
    sid = new_session()
    resp = client(stack, sid).chat(MODEL, messages=[QUESTION], options=OPTIONS, stream=False)
    assert resp.done and resp.message.role == "assistant" and resp.message.content
    rows = stack.rows(sid)
    assert [(r.role, r.status) for r in rows] == [("user", "ok"), ("assistant", "ok")]
    assert rows[0].content == QUESTION["content"] and rows[0].tokens > 0
    assert rows[1].content == resp.message.content and rows[1].tokens > 0


def test_chat_streamed_matches_stored_reply(stack):
    sid = new_session()
    chunks = list(client(stack, sid).chat(MODEL, messages=[QUESTION], options=OPTIONS, stream=True))
    assert len(chunks) > 2 and chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert chunks[-1].done_reason in ("stop", "length") and chunks[-1].eval_count > 0
    text = "".join(c.message.content for c in chunks)
    assert text and stack.rows(sid)[-1].content == text


def test_generate_streamed_and_not(stack):
    sid = new_session()
    whole = client(stack, sid).generate(MODEL, prompt="What is 2+2?", options=OPTIONS, stream=False)
    parts = list(client(stack, sid).generate(MODEL, prompt="What is 2+2?", options=OPTIONS,
                                             stream=True))
    assert whole.response and whole.done
    assert "".join(p.response for p in parts) == whole.response  # same seed, same reply
    assert parts[-1].done and parts[-1].prompt_eval_count == whole.prompt_eval_count
    assert [r.role for r in stack.rows(sid)] == ["user", "assistant", "user", "assistant"]


NEXT = {"role": "user", "content": "And 3+3?"}


def test_session_id_returned_in_header_and_final_body(stack):
    body = {"model": MODEL, "messages": [QUESTION], "options": OPTIONS, "stream": False}
    resp = requests.post(stack.url + "/api/chat", json=body, timeout=60)
    sid = resp.headers["X-Session-ID"]
    assert resp.json()["session_id"] == sid and uuid.UUID(sid)
    # (the same question again would be a regenerate: see test_branches)
    lines = requests.post(stack.url + "/api/chat", json={**body, "stream": True, "session_id": sid,
                                                          "messages": [NEXT]}, timeout=60)
    assert lines.headers["Content-Type"].startswith("application/x-ndjson")
    assert lines.headers["X-Session-ID"] == sid
    last = json.loads(lines.text.strip().splitlines()[-1])
    assert last["done"] and last["session_id"] == sid
    assert len(stack.rows(sid)) == 4


def test_second_turn_sees_the_first(stack):
    sid = new_session()
    c = client(stack, sid)
    first = c.chat(MODEL, messages=[QUESTION], options=OPTIONS, stream=False)
    second = c.chat(MODEL, messages=[{"role": "user", "content": "And 3+3?"}], options=OPTIONS,
                    stream=False)
    rows = stack.rows(sid)
    assert [r.role for r in rows] == ["user", "assistant", "user", "assistant"]
    assert rows[1].content == first.message.content
    # The model saw the first question and answer again: its prompt grew by at least those.
    assert second.prompt_eval_count > first.prompt_eval_count + first.eval_count


def test_new_session_starts_empty(stack):
    old = new_session()
    client(stack, old).chat(MODEL, messages=[QUESTION], options=OPTIONS, stream=False)
    grown = client(stack, old).chat(MODEL, messages=[NEXT], options=OPTIONS, stream=False)
    fresh = client(stack, new_session()).chat(MODEL, messages=[QUESTION], options=OPTIONS,
                                              stream=False)
    assert fresh.prompt_eval_count < grown.prompt_eval_count


def test_resent_conversation_creates_no_duplicates(stack):
    sid = new_session()
    c = client(stack, sid)
    first = c.chat(MODEL, messages=[QUESTION], options=OPTIONS, stream=False)
    follow = {"role": "user", "content": "And 3+3?"}
    history = [QUESTION, {"role": "assistant", "content": first.message.content}, follow]
    resent = c.chat(MODEL, messages=history, options=OPTIONS, stream=False)
    rows = stack.rows(sid)
    assert [(r.role, r.content) for r in rows[:3]] == [(m["role"], m["content"]) for m in history]
    assert len(rows) == 4
    # Same prompt as a client that sent only the new message.
    other = new_session()
    client(stack, other).chat(MODEL, messages=[QUESTION], options=OPTIONS, stream=False)
    tail_only = client(stack, other).chat(MODEL, messages=[follow], options=OPTIONS, stream=False)
    assert resent.prompt_eval_count == tail_only.prompt_eval_count


def test_ten_concurrent_chats_run_one_at_a_time(stack):
    sessions = [new_session() for _ in range(10)]

    def ask(sid):
        return client(stack, sid).chat(MODEL, messages=[QUESTION], stream=False,
                                       options={**OPTIONS, "num_predict": 4})

    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(ask, sessions))
    assert all(r.done for r in replies)
    replies_rows = [stack.rows(sid) for sid in sessions]
    assert all([r.role for r in rows] == ["user", "assistant"] for rows in replies_rows)
    spans = sorted((rows[1].started_at, rows[1].created_at) for rows in replies_rows)
    for (_, finished), (next_start, _) in zip(spans, spans[1:]):
        assert finished <= next_start, "two requests ran at once"


def test_a_non_streamed_turn_says_what_each_layer_took(stack):
    """Server-Timing (chatbot.ops.timing): measured marks from the web, the broker, the worker's
    flow and the relay back, which bench/sidebyside.py reports per layer."""
    body = {"model": MODEL, "messages": [QUESTION], "options": OPTIONS, "stream": False}
    resp = requests.post(stack.url + "/api/chat", json=body, timeout=60)
    timings = {}
    for part in resp.headers["Server-Timing"].split(","):
        name, dur = part.strip().split(";dur=")
        timings[name] = float(dur)
    assert set(timings) == {"admit", "hop", "start", "context", "store_request",
                            "upstream", "store_reply", "finish", "relay", "respond", "total"}
    assert all(value >= 0 for value in timings.values())
    # The model's own time is the biggest part, and the parts fit inside the whole.
    assert timings["upstream"] >= resp.json()["total_duration"] / 1e6 * 0.9
    assert sum(v for k, v in timings.items() if k != "total") <= timings["total"] + 1.0
    # Ollama's own fields are untouched: no timing leaks into the body.
    assert "marks" not in resp.json() and "marks" not in json.dumps(resp.json())


def test_layers_count_the_web_and_the_worker_overlapping_once():
    """A waiting worker can claim a request before the web has heard back from admitting it:
    the overlap is the admit's, the hop is 0, and the layers still add up to the whole."""
    from chatbot.ops import timing

    marks = {"received": 0.0, "admitted": 1.0, "task": 0.8, "begun": 1.3, "BuildContext": 1.4,
             "StoreRequest": 1.6, "CallChat": 2.0, "StoreReply": 2.1, "ending": 2.2,
             "relayed": 2.4, "responded": 2.5}
    layers = timing.layers(marks)
    assert layers["admit"] == 1.0 and layers["hop"] == 0.0
    assert layers["start"] == pytest.approx(0.3)
    assert sum(v for k, v in layers.items() if k != "total") == pytest.approx(layers["total"])

"""RESPONSE_CACHE_TTL: a deterministic request asked again is answered from Redis without
entering the line, in the same wire shape, stored as a turn of its session, never across keys;
anything else goes through the line as before. Against the bundled engine."""
import json
import time
import uuid

import openai
import pytest
import requests

from tests.conftest import MODEL, serve

A, B = "key-alice-0123456789", "key-bob-0123456789"
QUESTION = [{"role": "user", "content": "Name a colour of the sea."}]
FIXED = {"temperature": 0, "num_predict": 6}


@pytest.fixture(scope="module")
def cached(stack):
    app = stack.app_with({"RESPONSE_CACHE_TTL": 60, "API_KEYS": f"alice={A},bob={B}"})
    server, url = serve(app)
    yield app, url
    server.shutdown()


def ask(url, key=A, options=FIXED, stream=False, session_id=None, messages=QUESTION,
        path="/api/chat"):
    body = {"model": MODEL, "stream": stream, "options": options}
    if path == "/api/chat":
        body["messages"] = messages
    else:
        body["prompt"] = messages[-1]["content"]
    if session_id:
        body["session_id"] = session_id
    return requests.post(url + path, json=body, timeout=120,
                         headers={"Authorization": f"Bearer {key}"})


def ran_in_line(app, resp):
    return bool(app.extensions["line"].info(resp.headers["X-Request-ID"]))


def test_a_deterministic_request_asked_again_is_answered_from_the_cache(cached, stack):
    app, url = cached
    messages = [{"role": "user", "content": f"Name a colour of the sea. ({uuid.uuid4()})"}]
    first = ask(url, messages=messages)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    assert ran_in_line(app, first)
    again = ask(url, messages=messages)
    assert again.status_code == 200 and again.headers["X-Cache"] == "hit"
    assert not ran_in_line(app, again)  # never entered the line
    one, two = first.json(), again.json()
    assert two["message"] == one["message"] and two["eval_count"] == one["eval_count"]
    assert two["session_id"] != one["session_id"]
    # Stored in its own session as a normal turn.
    rows = stack.rows(two["session_id"])
    assert [(r.role, r.content, r.status) for r in rows] == [
        ("user", messages[0]["content"], "ok"), ("assistant", one["message"]["content"], "ok")]
    assert [r.seq for r in rows] == [1, 2] and rows[0].request_id == again.headers["X-Request-ID"]
    # Streamed: the same wire shape, the whole reply in one chunk, then the final one.
    streamed = ask(url, messages=messages, stream=True)
    assert streamed.headers["X-Cache"] == "hit"
    lines = [json.loads(line) for line in streamed.iter_lines() if line]
    assert [line["done"] for line in lines] == [False, True]
    assert lines[0]["message"]["content"] == one["message"]["content"]
    assert lines[1]["eval_count"] == one["eval_count"]
    # generate too.
    prompt = [{"role": "user", "content": f"Say hello. ({uuid.uuid4()})"}]
    made = ask(url, messages=prompt, path="/api/generate")
    hit = ask(url, messages=prompt, path="/api/generate")
    assert (made.headers["X-Cache"], hit.headers["X-Cache"]) == ("miss", "hit")
    assert hit.json()["response"] == made.json()["response"]
    time.sleep(1.5)  # a web process writes its metrics once a second
    metrics = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {A}"},
                           timeout=30).text
    assert 'chatbot_response_cache_total{outcome="hit"}' in metrics


def test_the_cache_is_never_used_across_keys_or_for_random_replies(cached):
    app, url = cached
    messages = [{"role": "user", "content": f"Name a fish. ({uuid.uuid4()})"}]
    assert ask(url, messages=messages).headers["X-Cache"] == "miss"
    bobs = ask(url, key=B, messages=messages)
    assert bobs.headers["X-Cache"] == "miss" and ran_in_line(app, bobs)
    sampled = {"temperature": 0.8, "num_predict": 4}
    for _ in range(2):
        resp = ask(url, messages=messages, options=sampled)
        assert "X-Cache" not in resp.headers and ran_in_line(app, resp)
    seeded = {"temperature": 0.8, "seed": 7, "num_predict": 4}
    assert ask(url, messages=messages, options=seeded).headers["X-Cache"] == "miss"
    assert ask(url, messages=messages, options=seeded).headers["X-Cache"] == "hit"


def test_a_session_that_moved_on_is_a_new_request(cached, stack):
    """The key holds the session's thread: the same question later in a conversation is
    asked of the model, with its history; asked again right after its reply, it is a
    regenerate (a branch), never answered from the cache."""
    app, url = cached
    sid = str(uuid.uuid4())
    messages = [{"role": "user", "content": f"Name a bird. ({uuid.uuid4()})"}]
    other = [{"role": "user", "content": "Name a fish."}]
    assert ask(url, messages=messages, session_id=sid).headers["X-Cache"] == "miss"
    again = ask(url, messages=messages, session_id=sid)
    assert "X-Cache" not in again.headers and ran_in_line(app, again)
    assert len(stack.rows(sid)) == 3  # the question once, two replies (siblings)
    assert ask(url, messages=other, session_id=sid).headers["X-Cache"] == "miss"
    later = ask(url, messages=messages, session_id=sid)
    assert later.headers["X-Cache"] == "miss" and ran_in_line(app, later)
    assert len(stack.rows(sid)) == 7
    # Another key's session stays another key's, cached or not.
    assert ask(url, key=B, messages=messages, session_id=sid).status_code == 404


def test_openai_clients_get_cached_replies_in_their_shape(cached):
    _, url = cached
    client = openai.OpenAI(base_url=url + "/v1", api_key=A)
    content = f"Name a tree. ({uuid.uuid4()})"
    ask_it = lambda: client.chat.completions.with_raw_response.create(  # noqa: E731
        model=MODEL, temperature=0, max_tokens=5, messages=[{"role": "user", "content": content}])
    first, again = ask_it(), ask_it()
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("miss", "hit")
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    stream = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=5, stream=True,
                                            messages=[{"role": "user", "content": content}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        first.parse().choices[0].message.content

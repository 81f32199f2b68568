"""Resumable replies: a client that opted in (X-Resumable or "resumable": true) and drops its
connection comes back for the rest (GET /api/requests/<id>/stream?after=N, or Last-Event-ID on
/api/events); one that never comes back is cancelled after RESUME_GRACE_SECONDS."""
import json
import time
import uuid

import ollama
import pytest
import requests

from tests.conftest import MODEL, serve
from tests.test_keys import A, B, bearer, keyed  # noqa: F401  (keyed: a fixture)
from tests.test_queue import LONG, SHORT, chat_body, wait_for

RESUME = {"X-Resumable": "true"}
STEADY = {"temperature": 0, "seed": 42, "num_predict": 120}


def info(url, rid, headers=None):
    return requests.get(f"{url}/api/queue/{rid}", headers=headers, timeout=5).json()


def lines_of(resp):
    return [json.loads(line) for line in resp.iter_lines() if line]


def drop_after(url, body, n, headers=RESUME):
    """Stream a chat, read `n` lines, hang up. Returns (request id, the lines read)."""
    resp = requests.post(url + "/api/chat", json=body, headers=headers, stream=True, timeout=60)
    assert resp.status_code == 200
    rid, lines = resp.headers["X-Request-ID"], resp.iter_lines()
    got = [json.loads(next(lines)) for _ in range(n)]
    resp.close()
    return resp, rid, got


def test_a_dropped_stream_comes_back_whole_with_no_gap_and_no_duplicate(stack):
    sid = str(uuid.uuid4())
    first, rid, got = drop_after(stack.url, chat_body(STEADY, sid), 5)
    assert first.headers["X-Resumable"] == "true" and first.headers["X-First-Chunk"] == "1"
    # The web noticed, and keeps the reply going for the client instead of cancelling it.
    wait_for(lambda: "detached_until" in info(stack.url, rid), what="the request to be kept")
    assert info(stack.url, rid)["state"] == "running"
    again = requests.get(f"{stack.url}/api/requests/{rid}/stream?after=5", stream=True, timeout=60)
    assert again.status_code == 200 and again.headers["X-First-Chunk"] == "6"
    assert again.headers["X-Request-ID"] == rid and again.headers["X-Session-ID"] == sid
    rest = lines_of(again)
    assert rest[-1]["done"] and rest[-1]["session_id"] == sid
    assert rest[-1]["eval_count"] == STEADY["num_predict"]  # it ran to the end: not cancelled
    # after=0 is the whole reply: the two halves are exactly it.
    whole = lines_of(requests.get(f"{stack.url}/api/requests/{rid}/stream?after=0", timeout=60))
    assert got + rest == whole
    rows = stack.rows(sid)
    assert [(r.role, r.status) for r in rows] == [("user", "ok"), ("assistant", "ok")]
    assert rows[1].content == "".join(line["message"]["content"] for line in whole)


def test_a_client_that_never_comes_back_is_cancelled_after_the_grace(stack):
    app = stack.app_with({"RESUME_GRACE_SECONDS": 1.5})
    server, url = serve(app)
    try:
        sid = str(uuid.uuid4())
        _, rid, got = drop_after(url, {**chat_body(LONG, sid), "resumable": True}, 3, headers={})
        dropped = time.monotonic()
        wait_for(lambda: info(url, rid)["state"] == "cancelled", timeout=20,
                 what="the request to be given up")
        waited = time.monotonic() - dropped
        assert 1.5 <= waited < 10, waited
        rows = wait_for(lambda: [r for r in stack.rows(sid) if r.role == "assistant"],
                        what="the partial reply")
        streamed = "".join(line["message"]["content"] for line in got)
        # Stored as cancelled, with what was generated while nobody listened, too.
        assert rows[0].status == "cancelled" and rows[0].content.startswith(streamed)
        assert len(rows[0].content) > len(streamed)
        # Coming back too late: the rest of what was made, and the reason it stopped.
        late = lines_of(requests.get(f"{url}/api/requests/{rid}/stream?after=3", timeout=30))
        assert late[-1] == {"error": "request cancelled"}
        assert streamed + "".join(line["message"]["content"] for line in late[:-1]) == rows[0].content
    finally:
        server.shutdown()


def test_a_non_streamed_resumable_request_answers_the_client_that_comes_back(stack):
    sid = str(uuid.uuid4())
    body = {**chat_body({**STEADY, "num_predict": 300}, sid, stream=False), "resumable": True}
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(stack.url + "/api/chat", json=body, timeout=0.3)  # hangs up early
    rid = wait_for(lambda: next((r.request_id for r in stack.rows(sid)), None),
                   what="the request to start")
    wait_for(lambda: "detached_until" in info(stack.url, rid), what="the request to be kept")
    answer = requests.get(f"{stack.url}/api/requests/{rid}/stream?after=0", timeout=180)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    reply = answer.json()
    assert reply["done"] and reply["message"]["content"] == stack.rows(sid)[1].content


def test_last_event_id_replays_the_tokens_after_it(stack):
    sid = str(uuid.uuid4())
    resp = requests.post(stack.url + "/api/chat", json={**chat_body(SHORT | {"num_predict": 8}, sid),
                                                        "resumable": True}, timeout=60)
    rid, chunks = resp.headers["X-Request-ID"], [json.loads(x) for x in resp.text.splitlines()][:-1]
    events = requests.get(f"{stack.url}/api/events?channel={rid}", stream=True, timeout=30,
                          headers={"Last-Event-ID": "3"})
    seen, current = [], {}
    for line in events.iter_lines(decode_unicode=True):
        if not line:
            if current:
                seen.append(current)
            current = {}
            if seen and seen[-1].get("event") == "done":
                break
        elif not line.startswith(":"):
            field, value = line.split(":", 1)
            current[field] = value.strip()
    events.close()
    tokens = [e for e in seen if e.get("event") == "token"]
    assert [int(e["id"]) for e in tokens] == list(range(4, len(chunks) + 1))
    assert [json.loads(e["data"]) for e in tokens] == chunks[3:]
    assert seen[-1]["event"] == "done"


def test_a_client_that_does_not_opt_in_sees_nothing_new_and_is_cancelled_at_once(stack):
    resp = requests.post(stack.url + "/api/chat", json=chat_body(SHORT), timeout=60)
    assert "X-Resumable" not in resp.headers and "X-First-Chunk" not in resp.headers
    assert all("n" not in json.loads(line) for line in resp.text.splitlines())
    parts = list(ollama.Client(host=stack.url).chat(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], options=SHORT, stream=True))
    assert parts[-1].done and all(not p.done for p in parts[:-1])
    sid = str(uuid.uuid4())
    _, rid, _ = drop_after(stack.url, chat_body(LONG, sid), 2, headers={})
    wait_for(lambda: info(stack.url, rid)["state"] == "cancelled", timeout=5,
             what="the request to be cancelled")
    assert "detached_until" not in info(stack.url, rid)
    with_header = requests.get(f"{stack.url}/api/requests/{rid}/stream", timeout=5)
    assert with_header.status_code == 400 and "not resumable" in with_header.json()["error"]


def test_bad_resumes_are_refused_before_anything_is_read(stack):
    assert requests.get(f"{stack.url}/api/requests/nope/stream", timeout=5).status_code == 404
    resp = requests.post(stack.url + "/api/chat", json={**chat_body(SHORT, stream=False),
                                                        "resumable": True}, timeout=60)
    rid = resp.headers["X-Request-ID"]
    for after in ("-1", "x", "1e3", "99999999999"):
        bad = requests.get(f"{stack.url}/api/requests/{rid}/stream?after={after}", timeout=5)
        assert bad.status_code == 400 and "after" in bad.json()["error"]
    for body, headers in (({"resumable": "yes"}, {}), ({}, {"X-Resumable": "maybe"})):
        bad = requests.post(stack.url + "/api/chat", json={**chat_body(SHORT), **body},
                            headers=headers, timeout=5)
        assert bad.status_code == 400 and "resumable" in bad.json()["error"].lower()


def test_another_key_cannot_resume_a_request(keyed):
    _, url = keyed
    resp = requests.post(url + "/api/chat", json={**chat_body(SHORT, stream=False),
                                                  "resumable": True},
                         headers=bearer(A), timeout=60)
    rid = resp.headers["X-Request-ID"]
    theirs = requests.get(f"{url}/api/requests/{rid}/stream", headers=bearer(B), timeout=5)
    assert theirs.status_code == 404
    mine = requests.get(f"{url}/api/requests/{rid}/stream", headers=bearer(A), timeout=30)
    assert mine.status_code == 200 and mine.json()["message"]["content"] == resp.json()["message"]["content"]


def test_an_openai_stream_resumes_with_event_ids(stack):
    body = {"model": MODEL, "stream": True, "resumable": True, "max_tokens": 40, "seed": 42,
            "temperature": 0, "messages": [{"role": "user", "content": "Tell me about the sea."}]}
    resp = requests.post(stack.url + "/v1/chat/completions", json=body, stream=True, timeout=60)
    rid, lines = resp.headers["X-Request-ID"], resp.iter_lines(decode_unicode=True)
    got = []
    while len(got) < 4:  # id, data, blank: each chunk numbered
        line = next(lines)
        if line.startswith("id:"):
            got.append(int(line.split(":")[1]))
    resp.close()
    assert got == [1, 2, 3, 4]
    rest = requests.get(f"{stack.url}/api/requests/{rid}/stream?after=4", timeout=60).text
    ids = [int(x.split(":")[1]) for x in rest.splitlines() if x.startswith("id:")]
    assert ids[0] == 5 and ids == list(range(5, 5 + len(ids)))
    assert rest.rstrip().endswith("data: [DONE]")

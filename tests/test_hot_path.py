"""What the request path does to be fast (#12), held to what it must still guarantee: a task
per request however the worker takes them, the web woken only for what its client waits for,
and one kept connection to the upstream."""
import http.client
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from chatbot.line import admission, running
from chatbot.ops import procs
from chatbot.upstream import Upstream
from tests.conftest import MODEL, OPTIONS

SHORT = {**OPTIONS, "num_predict": 3}


def chat(url, stream, sid=None):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}],
            "options": SHORT, "stream": stream, "session_id": sid or str(uuid.uuid4())}
    resp = requests.post(url + "/api/chat", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp


def wait_for(check, seconds=10):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_draining_worker_leaves_no_task_message_behind(stack):
    """Twelve chats at once: the worker runs the ones that wait within one task, taking a
    task message off the queue for each; when all are answered, none is left over, the line
    is empty, and the stored turns are all there, once."""
    client = stack.app.extensions["redis"]
    sids = [str(uuid.uuid4()) for _ in range(12)]
    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda sid: chat(stack.url, False, sid), sids))
    assert all(r.json()["done"] for r in replies)
    wait_for(lambda: client.llen("ollama") == 0 and client.zcard("chatbot:waiting:ollama") == 0)
    for sid in sids:
        assert [(r.role, r.status) for r in stack.rows(sid)] == [("user", "ok"),
                                                                 ("assistant", "ok")]
    assert chat(stack.url, False).json()["message"]["content"]  # and the next one runs


def rings_of(stack, request_id):
    """The events that rang this web process's doorbell for one request."""
    hub = stack.app.extensions["relay"].hub()
    entries = stack.app.extensions["redis"].xrange(f"chatbot:bell:{hub.lease}")
    return [json.loads(f[b"e"])["t"] for _, f in entries if f[b"r"].decode() == request_id]


def test_a_client_that_waits_for_the_whole_reply_is_woken_once(stack):
    """Not streamed: its web process is rung for the final event alone (the stream still
    holds every event). Streamed: for each event, as the client reads them."""
    whole = chat(stack.url, False)
    rid = whole.headers["X-Request-ID"]
    assert rings_of(stack, rid) == ["done"]
    kept = [json.loads(f[b"e"])["t"] for _, f in
            stack.app.extensions["redis"].xrange(f"chatbot:relay:{rid}")]
    assert kept[0] == "started" and kept[-1] == "done" and "chunk" in kept
    streamed = chat(stack.url, True)
    rang = rings_of(stack, streamed.headers["X-Request-ID"])
    assert rang[0] == "started" and rang[-1] == "done" and rang.count("chunk") >= 2


def test_upstream_calls_keep_their_connection(tmp_path, monkeypatch):
    """A streamed reply is read to the body's end, so the next call goes over the same
    connection instead of a new one; each call is one write (headers and body together).
    Against bench/fake_ollama.py: it keeps connections alive as Ollama does, which the bundled
    engine's server (werkzeug's, which closes every connection) cannot."""
    port = procs.free_port()
    fake = procs.spawn([sys.executable, str(procs.PROJECT_ROOT / "bench" / "fake_ollama.py"),
                        "--port", str(port)], log=tmp_path / "fake.log")
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_until(lambda: procs.http_ok(url + "/api/version"), 30, fake, "fake ollama")
        writes, send = [], http.client.HTTPConnection.send
        monkeypatch.setattr(http.client.HTTPConnection, "send",
                            lambda conn, data: writes.append(data) or send(conn, data))
        upstream = Upstream(url)
        body = {"model": "fake:latest", "messages": [{"role": "user", "content": "hi"}]}
        socks = []
        for _ in range(3):
            for _, chunk in upstream.stream("/api/chat", body):
                if chunk.get("done"):
                    break
            pools = upstream.adapter.poolmanager.pools
            conns = [c for key in pools.keys() for c in pools[key].pool.queue if c is not None]
            socks.append([c.sock for c in conns if c.sock is not None])
        assert len(socks[0]) == 1 and socks[0] == socks[1] == socks[2]
        assert len(writes) == 3 and all(w.startswith(b"POST /api/chat") and b'"messages"' in w
                                        for w in writes)
    finally:
        procs.stop(fake)


def test_a_waiting_claim_runs_when_the_message_comes_stamped_with_that_moment(stack):
    """Between requests the worker waits on the task list with its claim queued behind the
    wait, in one round trip. The request admitted meanwhile is claimed with its message, and
    stamped with the moment it was claimed (Redis's clock), not when the wait began."""
    line, client = stack.app.extensions["line"], stack.app.extensions["redis"]
    queue, rid = f"wait-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    message = json.dumps({"headers": {"task": "chatbot.run_next", "id": "m1"}})
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(lambda: time.sleep(0.3) or admission.admit(
            line, rid, queue, {"model": MODEL, "session_id": str(uuid.uuid4())}, "lease-wait",
            task=(f"tasks-{queue}", message)))
        began = time.time()
        claimed, taken = running.claim(line, queue, wait=(f"tasks-{queue}", 5))
        assert later.result() == 1
    assert claimed.request_id == rid and taken.decode() == message
    assert client.llen(f"tasks-{queue}") == 0
    info = line.info(rid)
    assert float(info["started_at"]) >= float(info["queued_at"]) >= began + 0.2
    # Nothing comes: the wait ends empty-handed after its timeout.
    assert running.claim(line, queue, wait=(f"tasks-{queue}", 0.1)) == (None, None)


def test_the_next_request_is_claimed_in_the_round_trip_that_ends_the_one_before(stack,
                                                                              monkeypatch):
    """A worker with more to run claims the next request (taking its task message) in the
    round trip of the ending before it: one trip, not two, stamped with when it ran. With
    nobody waiting, that claim comes back empty and nothing else changes."""
    line, client = stack.app.extensions["line"], stack.app.extensions["redis"]
    queue, rids = f"next-{uuid.uuid4().hex[:8]}", [str(uuid.uuid4()) for _ in range(2)]
    tasks = f"tasks-{queue}"
    for rid in rids:
        admission.admit(line, rid, queue, {"model": MODEL, "session_id": str(uuid.uuid4())},
                        "lease-next", task=(tasks, "message"))
    first = running.claim(line, queue)
    first.next = running.NextClaim(line, queue, task_list=tasks)
    time.sleep(0.2)  # the request's run: the next one starts when its claim runs, not before
    ended_at = time.time()
    trips, execute = [], type(client.pipeline()).execute
    monkeypatch.setattr(type(client.pipeline()), "execute",
                        lambda pipe, *a, **k: trips.append(1) or execute(pipe, *a, **k))
    first.end({"final": {"done": True, "eval_count": 1}, "content": ""})
    assert len(trips) == 1 and first.state == "done" and first.waiting == 1
    second = first.next.claimed
    assert second.request_id == rids[1] and line.info(rids[1])["state"] == "running"
    assert float(line.info(rids[1])["started_at"]) >= ended_at - 0.05
    assert client.llen(tasks) == 1  # its task message taken in exchange
    second.next = running.NextClaim(line, queue, task_list=tasks)
    second.end({"final": {"done": True, "eval_count": 1}, "content": ""})
    assert len(trips) == 2 and second.next.sent and second.next.claimed is None
    assert line.info(rids[1])["state"] == "done" and client.llen(tasks) == 1

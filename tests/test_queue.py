"""The queue: positions, the bound, cancellation, worker death, SSE, several hosts, Flower."""
import json
import os
import signal
import socket
import threading
import time
import uuid

import requests

from chatbot.ops import procs
from tests.conftest import MODEL, serve

BUSY = "server busy, please try again.  maximum pending requests exceeded"
LONG = {"temperature": 0, "seed": 42, "num_predict": 400}
SHORT = {"temperature": 0, "seed": 42, "num_predict": 2}
ESSAY = [{"role": "user", "content": "Write a long essay about the history of the sea."}]


def chat_body(options, session_id=None, stream=True):
    body = {"model": MODEL, "messages": ESSAY, "options": options, "stream": stream}
    if session_id:
        body["session_id"] = session_id
    return body


class Background(threading.Thread):
    """A request sent from another thread; keeps its response or error."""

    def __init__(self, url, body, request_id=None, timeout=120, headers=None):
        super().__init__(daemon=True)
        self.url, self.body, self.timeout = url, body, timeout
        self.headers = {**(headers or {}), **({"X-Request-ID": request_id} if request_id else {})}
        self.response, self.lines = None, []
        self.start()

    def run(self):
        with requests.post(self.url + "/api/chat", json=self.body, headers=self.headers,
                           stream=True, timeout=self.timeout) as resp:
            self.response = resp
            self.lines = [json.loads(line) for line in resp.iter_lines() if line]


def wait_for(predicate, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def queue_state(url):
    return requests.get(url + "/api/queue", timeout=5).json()["queues"][0]


def running_id(url):
    running = queue_state(url)["running"]
    return running and running["request_id"]


def start_slow(stack):
    rid = f"slow-{uuid.uuid4()}"
    slow = Background(stack.url, chat_body(LONG), rid)
    wait_for(lambda: running_id(stack.url) == rid, what="the slow request to run")
    return rid, slow


def cancel(stack, rid):
    return requests.delete(f"{stack.url}/api/queue/{rid}", timeout=5)


def test_positions_count_down_as_the_queue_drains(stack):
    # one short turn first: the model's runs are measured (the estimate has something to sum)
    requests.post(stack.url + "/api/chat", json=chat_body(SHORT, stream=False), timeout=60)
    slow_id, slow = start_slow(stack)
    ids = [f"wait-{i}-{uuid.uuid4()}" for i in range(3)]
    events = requests.get(f"{stack.url}/api/events?channel={ids[2]}", stream=True, timeout=60)
    waiting = []
    for rid in ids:
        waiting.append(Background(stack.url, chat_body(SHORT, stream=False), rid))
        wait_for(lambda: rid in [w["request_id"] for w in queue_state(stack.url)["waiting"]])
    state = queue_state(stack.url)
    assert [(w["request_id"], w["position"]) for w in state["waiting"]] == list(zip(ids, (1, 2, 3)))
    assert state["depth"] == 3 and state["running"]["request_id"] == slow_id
    assert all(w["model"] == MODEL and w["age"] >= 0 for w in state["waiting"])
    one = requests.get(f"{stack.url}/api/queue/{ids[1]}", timeout=5).json()
    assert one["position"] == 2 and one["state"] == "queued"
    assert cancel(stack, slow_id).status_code == 200
    for thread in waiting:
        thread.join(60)
        assert thread.response.status_code == 200 and thread.lines[-1]["done"]
    slow.join(30)
    seen = []
    for line in events.iter_lines(decode_unicode=True):
        if line.startswith("event:"):
            kind = line.split(":", 1)[1]
        elif line.startswith("data:"):
            seen.append((kind, line.split(":", 1)[1]))
            if kind == "done":
                break
    events.close()
    positions = [json.loads(data)["position"] for kind, data in seen if kind == "queued"]
    assert positions[0] == 3 and positions[-1] == 1 and positions == sorted(positions, reverse=True)
    # each place comes with the estimate (chatbot.line.eta); the model was measured before it
    starts = [json.loads(data)["start_in"] for kind, data in seen if kind == "queued"]
    assert all(isinstance(start, float) and start > 0 for start in starts), starts
    kinds = [kind for kind, _ in seen]
    assert kinds.index("started") > kinds.index("queued") and "token" in kinds


def test_full_queue_answers_503_with_retry_after(stack):
    small = stack.app_with({"MAX_QUEUE": 2})
    server, url = serve(small)
    try:
        slow_id, slow = start_slow(stack)
        queued = [Background(url, chat_body(SHORT, stream=False), f"q-{i}-{uuid.uuid4()}")
                  for i in range(2)]
        wait_for(lambda: queue_state(url)["depth"] == 2, what="two waiting")
        refused = requests.post(url + "/api/chat", json=chat_body(SHORT, stream=False), timeout=10)
        assert refused.status_code == 503 and refused.json() == {"error": BUSY}
        assert int(refused.headers["Retry-After"]) > 0
        # A task for each waiting request, and none for the refused one (the busy worker
        # fetches no message until it is done).
        assert stack.app.extensions["redis"].llen("ollama") == 2
        cancel(stack, slow_id)
        for thread in queued:
            thread.join(60)
            assert thread.response.status_code == 200
        slow.join(30)
    finally:
        server.shutdown()


def test_disconnected_stream_stops_the_generation(stack, engine_url):
    sid = str(uuid.uuid4())
    resp = requests.post(stack.url + "/api/chat", json=chat_body(LONG, sid), stream=True, timeout=60)
    lines = resp.iter_lines()
    next(lines), next(lines)
    resp.close()
    closed = time.monotonic()
    # The engine runs one generation at a time: it answers once ours has stopped. What it
    # waited for is the time since the close less its own run (the rest of 400 tokens would
    # be several seconds on an idle machine, many more on a loaded one).
    answer = requests.post(engine_url + "/api/generate", timeout=60, json={
        "model": MODEL, "prompt": "hi", "options": SHORT, "stream": False}).json()
    assert time.monotonic() - closed - answer["total_duration"] / 1e9 < 2.0
    rows = wait_for(lambda: [r for r in stack.rows(sid) if r.role == "assistant"], what="reply row")
    assert rows[0].status == "cancelled" and rows[0].content


def test_disconnected_queued_request_never_reaches_the_model(stack):
    slow_id, slow = start_slow(stack)
    sid, rid = str(uuid.uuid4()), f"gone-{uuid.uuid4()}"
    client = raw_request(stack.url, "/api/chat", chat_body(SHORT, sid), {"X-Request-ID": rid})
    wait_for(lambda: requests.get(f"{stack.url}/api/queue/{rid}", timeout=5).ok)
    client.close()  # the client gives up while still in line
    wait_for(lambda: requests.get(f"{stack.url}/api/queue/{rid}", timeout=5).json()["state"]
             == "cancelled", what="the queued request to be cancelled")
    cancel(stack, slow_id)
    slow.join(30)
    assert queue_state(stack.url)["depth"] == 0
    assert stack.rows(sid) == []  # never started: nothing stored, nothing generated


def test_killed_worker_does_not_leave_the_client_hanging(stack):
    sid = str(uuid.uuid4())
    rid = f"doomed-{uuid.uuid4()}"
    doomed = Background(stack.url, chat_body(LONG, sid), rid)
    wait_for(lambda: running_id(stack.url) == rid, what="the request to run")
    # Some of the reply is out (the started event, then chunks), so there is a part to keep.
    relay = stack.app.extensions["redis"]
    wait_for(lambda: relay.xlen(f"chatbot:relay:{rid}") >= 3, what="the first tokens")
    os.kill(stack.worker.pid, signal.SIGKILL)  # the solo pool: the task runs in the worker itself
    killed = time.monotonic()
    doomed.join(30)
    assert not doomed.is_alive() and time.monotonic() - killed < 10
    assert "error" in doomed.lines[-1]
    # The question is kept, and so is what had been streamed of the reply, marked lost.
    streamed = "".join(line["message"]["content"] for line in doomed.lines if "message" in line)
    rows = stack.rows(sid)
    assert [(r.role, r.status) for r in rows] == [("user", "ok"), ("assistant", "lost")]
    assert streamed and rows[1].content == streamed and rows[1].seq is None
    assert queue_state(stack.url)["running"] is None
    # A new worker (what `chatbot up`'s supervisor starts) serves the next request.
    stack.worker.wait()
    stack.worker = procs.start_worker(stack.env, log=stack.worker_log)
    procs.wait_until(lambda: stack.app.extensions["celery"].control.ping(timeout=0.5), 60,
                     stack.worker, "celery worker")
    ok = requests.post(stack.url + "/api/chat", json=chat_body(SHORT, stream=False), timeout=60)
    assert ok.status_code == 200


def raw_request(url, path, body, headers):
    """Send a request on a bare socket, so the test can hang up before any answer."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n{head}\r\n".encode() + data)
    return sock


def test_explicit_cancel_of_unknown_request_is_404(stack):
    resp = cancel(stack, "no-such-request-id")
    assert resp.status_code == 404 and "not found" in resp.json()["error"]


def test_flower_starts_against_the_same_broker(stack, logs):
    port = procs.free_port()
    flower = procs.spawn([procs.bin_path("celery"), "-A", "celery_app", "flower",
                          f"--port={port}", "--address=127.0.0.1"], env=stack.env,
                         log=logs / "flower.log", cwd=procs.PROJECT_ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        procs.wait_until(lambda: procs.http_ok(url + "/healthcheck"), 60, flower, "flower")
        assert requests.get(url + "/healthcheck", timeout=5).text == "OK"

        def flower_saw_a_task():  # the worker sends task events; Flower counts them
            requests.post(stack.url + "/api/chat", json=chat_body(SHORT, stream=False), timeout=60)
            return 'task="chatbot.run_next"' in requests.get(url + "/metrics", timeout=10).text

        wait_for(flower_saw_a_task, timeout=30, what="flower to see our task")
    finally:
        procs.stop(flower)


def test_hundreds_of_waiting_clients_are_held_and_released(stack):
    """More waiting clients than a Redis pool has connections: each waits without one."""
    slow_id, slow = start_slow(stack)
    clients = [raw_request(stack.url, "/api/chat", chat_body(SHORT), {}) for _ in range(150)]
    try:
        wait_for(lambda: queue_state(stack.url)["depth"] == 150, timeout=60, what="150 in line")
    finally:
        for sock in clients:
            sock.close()
    wait_for(lambda: queue_state(stack.url)["depth"] == 0, timeout=60, what="the line to empty")
    cancel(stack, slow_id)
    slow.join(30)


def test_the_task_admission_pushes_is_the_one_celery_sends(stack):
    """The admit script pushes run_next's broker message itself (one round trip, and never a
    request without its task): it must be what Celery's send_task writes, ids aside."""
    app, queue = stack.app, f"conformance-{uuid.uuid4().hex[:8]}"
    client = app.extensions["redis"]
    key, pushed = app.extensions["run_next_messages"](queue)
    ours = json.loads(pushed)
    task_id = ours["headers"]["id"]
    app.extensions["celery"].send_task("chatbot.run_next", args=[queue], queue=queue,
                                       ignore_result=True, task_id=task_id)
    sent = json.loads(client.rpop(queue))
    assert key == queue and client.llen(queue) == 0
    assert ours["properties"].pop("delivery_tag") != sent["properties"].pop("delivery_tag")
    assert ours == sent
    assert ours["headers"]["task"] == "chatbot.run_next"
    # Each task has ids of its own.
    again = json.loads(app.extensions["run_next_messages"](queue)[1])
    assert again["headers"]["id"] == again["properties"]["correlation_id"] != task_id


def test_a_reply_running_past_max_request_seconds_is_stopped_and_kept(stack):
    """MAX_REQUEST_SECONDS: a streamed reply that runs too long ends with an error line, and
    what it had generated is kept in the session; the line moves on."""
    short = stack.app_with({"MAX_REQUEST_SECONDS": 1})
    server, url = serve(short)
    try:
        sid = str(uuid.uuid4())
        began = time.monotonic()
        resp = requests.post(url + "/api/chat", json=chat_body({**LONG, "num_predict": 5000}, sid),
                             timeout=120)
        took = time.monotonic() - began
        lines = [json.loads(line) for line in resp.text.splitlines()]
        assert resp.status_code == 200 and "MAX_REQUEST_SECONDS" in lines[-1]["error"]
        streamed = "".join(line["message"]["content"] for line in lines[:-1])
        assert streamed and took < 30
        rows = stack.rows(sid)
        assert [(r.role, r.status) for r in rows] == [("user", "ok"), ("assistant", "failed")]
        assert rows[1].content == streamed
        assert queue_state(stack.url)["running"] is None
    finally:
        server.shutdown()

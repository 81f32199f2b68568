"""Faults lose nothing: a request runs once and is stored once, turns on one thread never
interleave, and every ending (refused, expired, lost, vanished) reaches the client."""
import os
import signal
import threading
import time
import uuid

import ollama
import pytest
import requests
from flask import Flask

from chatbot.ops import procs
from chatbot.api import init_app as api_init_app
from chatbot.store.keys import Keys
from chatbot.store import db
from chatbot.line import admission, running, sweep
from chatbot.redis_keys import INFO
from chatbot.redis_keys import LEASE, stream_key
from tests.conftest import MODEL, migrated_app, serve
from tests.test_queue import (LONG, SHORT, Background, cancel, chat_body,
                              queue_state, running_id, start_slow, wait_for)


def chat(url, sid, content, options=None, request_id=None):
    headers = {"X-Request-ID": request_id} if request_id else {}
    return requests.post(url + "/api/chat", headers=headers, timeout=120, json={
        "model": MODEL, "session_id": sid, "stream": False, "options": options or SHORT,
        "messages": [{"role": "user", "content": content}]})


def relay_length(stack, rid):
    return stack.app.extensions["redis"].xlen(stream_key(rid))


def worker_log_has(logs_dir, rid, text):
    lines = (logs_dir / "worker.log").read_text().splitlines()
    return any(rid in line and text in line for line in lines)


def test_a_redelivered_task_runs_nothing_and_stores_nothing(stack, logs_dir):
    sid, rid = str(uuid.uuid4()), f"once-{uuid.uuid4()}"
    assert chat(stack.url, sid, "Hi", request_id=rid).status_code == 200
    rows, events = len(stack.rows(sid)), relay_length(stack, rid)
    assert rows == 2
    # The broker hands a task out again (a worker died before acking it): it finds nobody
    # waiting, and does nothing.
    task = f"again-{uuid.uuid4()}"
    stack.app.extensions["celery"].send_task("chatbot.run_next", task_id=task, queue="ollama",
                                             args=["ollama"])
    wait_for(lambda: worker_log_has(logs_dir, task, "nothing waiting in ollama"),
             what="the redelivered task to find nothing")
    assert len(stack.rows(sid)) == rows and relay_length(stack, rid) == events


def test_a_task_sent_twice_while_queued_runs_once(stack):
    slow_id, slow = start_slow(stack)
    sid, rid = str(uuid.uuid4()), f"twice-{uuid.uuid4()}"
    waiting = Background(stack.url, {**chat_body(SHORT, sid, stream=False)}, rid)
    wait_for(lambda: rid in [w["request_id"] for w in queue_state(stack.url)["waiting"]])
    stack.app.extensions["celery"].send_task("chatbot.run_next", queue="ollama", args=["ollama"])
    cancel(stack, slow_id)
    waiting.join(60)
    slow.join(30)
    assert waiting.response.status_code == 200
    time.sleep(0.5)  # the duplicate has been taken from the queue by now, and refused
    assert [(r.role, r.status) for r in stack.rows(sid)] == [("user", "ok"), ("assistant", "ok")]


def ten_clients_three_turns(url, sid):
    errors = []

    def user(n):
        for turn in range(3):
            resp = chat(url, sid, f"client {n} turn {turn}", {**SHORT, "num_predict": 3})
            if resp.status_code != 200:
                errors.append(resp.text)

    threads = [threading.Thread(target=user, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return errors


def assert_whole_ordered_turns(rows):
    rows = [r for r in rows if r.seq is not None]
    assert [r.seq for r in rows] == list(range(1, 61))  # 30 turns, no gap, no fork
    users = [r.content for r in rows if r.role == "user"]
    assert sorted(users) == sorted(f"client {n} turn {t}" for n in range(10) for t in range(3))
    for n in range(10):  # each client's turns in its own order
        mine = [u for u in users if u.startswith(f"client {n} ")]
        assert mine == [f"client {n} turn {t}" for t in range(3)]
    for question, answer in zip(rows[::2], rows[1::2]):  # each turn whole: question, its reply
        assert (question.role, answer.role) == ("user", "assistant")
        assert question.request_id == answer.request_id


def test_ten_threads_three_turns_on_one_session_with_two_workers(stack, logs_dir):
    """Two workers take turns of the same session at once: the thread lock (and the unique
    position behind it) keeps every turn whole and in order."""
    second = procs.start_worker(stack.env, log=logs_dir / "worker2.log")
    try:
        procs.wait_until(lambda: len(stack.app.extensions["celery"].control.ping(timeout=0.5)) >= 2,
                         60, second, "second worker")
        sid = str(uuid.uuid4())
        errors = ten_clients_three_turns(stack.url, sid)
    finally:
        procs.stop(second)
    assert errors == []
    assert_whole_ordered_turns(stack.rows(sid))


def test_ten_threads_three_turns_on_postgresql_with_two_workers(redis_url, engine_url,
                                                                 postgres_url, logs_dir):
    # A broker of its own (another Redis database): the suite's worker must not take these.
    app, env = migrated_app(redis_url.rsplit("/", 1)[0] + "/3", engine_url, postgres_url)
    workers = [procs.start_worker(env, log=logs_dir / f"pg-worker-{i}.log") for i in range(2)]
    server, url = serve(app)
    try:
        procs.wait_until(lambda: len(app.extensions["celery"].control.ping(timeout=0.5)) >= 2,
                         60, workers[0], "two workers")
        sid = str(uuid.uuid4())
        errors = ten_clients_three_turns(url, sid)
        assert errors == []
        from chatbot.store import Message, db

        with app.app_context():
            assert_whole_ordered_turns(db.session.execute(
                db.select(Message).where(Message.session_id == sid).order_by(Message.id)
            ).scalars().all())
            db.session.remove()
            db.engine.dispose()
    finally:
        server.shutdown()
        for worker in workers:
            procs.stop(worker)


def test_a_turn_the_upstream_refuses_is_marked_failed_and_never_replayed(stack):
    sid = str(uuid.uuid4())
    assert chat(stack.url, sid, "Hi").status_code == 200
    refused = requests.post(stack.url + "/api/chat", timeout=120, json={  # the engine's 400
        "model": MODEL, "session_id": sid, "stream": False, "options": SHORT, "format": "yaml",
        "messages": [{"role": "user", "content": "poison"}]})
    assert refused.status_code == 400 and "invalid format" in refused.json()["error"]
    after = ollama.Client(host=stack.url, headers={"X-Session-ID": sid}).chat(
        MODEL, messages=[{"role": "user", "content": "Again"}], options=SHORT)
    rows = stack.rows(sid)
    assert [(r.content, r.status, r.seq) for r in rows if r.role == "user"] == [
        ("Hi", "ok", 1), ("poison", "failed", None), ("Again", "ok", 3)]
    alone = chat(stack.url, str(uuid.uuid4()), "Again").json()
    first = chat(stack.url, str(uuid.uuid4()), "Hi").json()
    # What the model saw: Hi, its reply and Again; the refused message was not replayed.
    assert after.prompt_eval_count < first["prompt_eval_count"] + alone["prompt_eval_count"] + 20


def test_a_reused_request_id_never_reads_an_earlier_reply(stack):
    sid, rid = str(uuid.uuid4()), f"reuse-{uuid.uuid4()}"
    first = chat(stack.url, sid, "Hi", request_id=rid)
    assert first.headers["X-Request-ID"] == rid
    # The request's record expires before its reply stream does: the id is still taken.
    stack.app.extensions["redis"].delete(INFO.format(rid))
    again = chat(stack.url, sid, "What is 2+2?", request_id=rid)
    assert again.status_code == 200 and again.headers["X-Request-ID"] != rid
    replies = [r for r in stack.rows(sid) if r.role == "assistant"]
    assert again.json()["message"]["content"] == replies[-1].content
    assert replies[-1].request_id == again.headers["X-Request-ID"]


def test_a_request_waiting_past_the_queue_timeout_fails_clearly(stack):
    impatient = stack.app_with({"QUEUE_TIMEOUT_SECONDS": 1})
    server, url = serve(impatient)
    try:
        slow_id, slow = start_slow(stack)
        sid = str(uuid.uuid4())
        started = time.monotonic()
        resp = chat(url, sid, "Hi")
        assert resp.status_code == 503 and "QUEUE_TIMEOUT_SECONDS" in resp.json()["error"]
        assert time.monotonic() - started < 6
        assert queue_state(url)["depth"] == 0
        cancel(stack, slow_id)
        slow.join(30)
        assert stack.rows(sid) == []  # its task, when the worker got to it, did nothing
    finally:
        server.shutdown()


def test_queued_requests_of_a_dead_web_process_never_run(stack, logs_dir):
    port = procs.free_port()
    web = procs.spawn([procs.bin_path("chatbot"), "web", "--port", str(port)], env=stack.env,
                      log=logs_dir / "web2.log")
    try:
        url = f"http://127.0.0.1:{port}"
        procs.wait_until(lambda: procs.http_ok(url + "/"), 30, web, "second web")
        slow_id, slow = start_slow(stack)
        sid, rid = str(uuid.uuid4()), f"orphan-{uuid.uuid4()}"
        Background(url, chat_body(SHORT, sid), rid)
        wait_for(lambda: rid in [w["request_id"] for w in queue_state(stack.url)["waiting"]])
        lease = stack.app.extensions["line"].info(rid)["lease"]
        # Its task is sent just after it joins the line (a web killed in between leaves an
        # entry without a task: the sweep's case, tested below).
        time.sleep(0.5)
        os.kill(web.pid, signal.SIGKILL)
        web.wait(10)
        # Its lease would lapse within LEASE_TTL; we let it lapse now.
        stack.app.extensions["redis"].delete(LEASE.format(lease))
        cancel(stack, slow_id)
        slow.join(30)
        wait_for(lambda: stack.app.extensions["line"].info(rid).get("state") == "cancelled",
                 what="the orphan to be cancelled at its claim")
        assert stack.rows(sid) == []
    finally:
        procs.stop(web)


def test_internal_errors_are_generic_and_carry_an_error_id(stack, caplog):
    app = Flask("broken")
    app.extensions["metrics"] = stack.app.extensions["metrics"]
    app.extensions["redis"] = stack.app.extensions["redis"]
    app.extensions["keys"] = Keys()  # none: one trusted user
    app.config.update(stack.app.config)  # the settings every route reads (CORS_ORIGINS ...)
    db.init_app(app)
    api_init_app(app)

    @app.get("/boom")
    def boom():
        raise RuntimeError("SELECT secret FROM users WHERE password = 'hunter2'")

    resp = app.test_client().get("/boom")
    error = resp.get_json()["error"]
    assert resp.status_code == 500 and "hunter2" not in error and "SELECT" not in error
    error_id = error.split("error id ")[1].rstrip(")")
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert logged and "hunter2" in str(logged[0].exc_info[1])


@pytest.fixture
def fragile(engine_url, tmp_path, logs_dir):
    """A stack of its own (Redis, worker, web) that a test may break."""
    port = procs.free_port()
    redis_proc, redis_url = procs.start_redis(port, log=logs_dir / "fragile-redis.log")
    app, env = migrated_app(redis_url, engine_url, f"sqlite:///{tmp_path / 'fragile.db'}")
    state = {"redis": redis_proc, "port": port, "env": env, "app": app}

    def start_worker():
        state["worker"] = procs.start_worker(env, log=logs_dir / "fragile-worker.log")
        procs.wait_until(lambda: app.extensions["celery"].control.ping(timeout=0.5), 60,
                         state["worker"], "fragile worker")

    def restart_redis():
        state["redis"].kill()
        state["redis"].wait()
        state["redis"], _ = procs.start_redis(port, log=logs_dir / "fragile-redis.log")

    start_worker()
    server, url = serve(app)
    state.update(url=url, start_worker=start_worker, restart_redis=restart_redis)
    yield state
    server.shutdown()
    procs.stop(state["worker"])
    procs.stop(state["redis"])


def fragile_busy(fragile, sid):
    rid = f"busy-{uuid.uuid4()}"
    busy = Background(fragile["url"], chat_body(LONG, sid), rid)
    wait_for(lambda: running_id(fragile["url"]) == rid, what="a request to run")
    relay = fragile["app"].extensions["redis"]
    wait_for(lambda: relay.xlen(stream_key(rid)) >= 3, what="the first tokens")
    return busy


def test_redis_restart_answers_every_waiting_client_and_the_stack_carries_on(fragile):
    sid = str(uuid.uuid4())
    busy = fragile_busy(fragile, sid)
    queued = Background(fragile["url"], chat_body(SHORT, stream=False))
    wait_for(lambda: queue_state(fragile["url"])["depth"] == 1, what="one waiting")
    restarted = time.monotonic()
    fragile["restart_redis"]()  # everything in Redis is gone: the line, the broker's queue
    queued.join(30)
    busy.join(30)
    assert not queued.is_alive() and not busy.is_alive()
    assert time.monotonic() - restarted < 15
    assert queued.response.status_code == 503 and "error" in queued.lines[-1], queued.lines
    assert "error" in busy.lines[-1]
    # The worker and the web reconnect by themselves.
    wait_for(lambda: chat(fragile["url"], str(uuid.uuid4()), "Hi").status_code == 200,
             timeout=60, what="a chat after the restart")


def test_the_sweep_clears_what_no_client_will(stack):
    """Beat's sweep: a waiting entry whose record vanished, one whose web process died, and a
    running request whose worker died."""
    from chatbot.redis_keys import BEAT, WAITING

    line, client = stack.app.extensions["line"], stack.app.extensions["redis"]
    queue, sid = f"sweep-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    vanished, orphan, dead = (f"{name}-{uuid.uuid4()}" for name in ("vanished", "orphan", "dead"))
    live, gone = f"live-{uuid.uuid4()}", f"gone-{uuid.uuid4()}"
    info = {"model": MODEL, "session_id": sid}
    admission.admit(line, dead, queue, info, live)
    assert running.claim(line, queue).request_id == dead
    admission.admit(line, vanished, queue, info, live)
    admission.admit(line, orphan, queue, info, gone)
    client.delete(INFO.format(vanished), BEAT.format(dead), LEASE.format(gone))
    with stack.app.app_context():
        assert sweep.sweep(line, queue) == 3
    assert client.zcard(WAITING.format(queue)) == 0
    assert line.info(orphan)["state"] == "cancelled" and line.info(dead)["state"] == "lost"
    assert line.snapshot(queue)["running"] is None and line.counts(queue) == (0, 0)


def test_a_bad_context_through_chatbot_is_a_400_and_the_next_chat_works(stack):
    sid = str(uuid.uuid4())
    bad = requests.post(stack.url + "/api/generate", timeout=60, json={
        "model": MODEL, "session_id": sid, "prompt": "hi", "stream": False,
        "context": [1, 2, 10 ** 9], "options": SHORT})
    assert bad.status_code == 400 and "context" in bad.json()["error"]
    assert [(r.role, r.status) for r in stack.rows(sid)] == [("user", "failed")]
    assert chat(stack.url, sid, "Hi").status_code == 200

"""Short outages are waited out (#23 part 6): a request whose engine restarts keeps its turn
and is answered once the engine is back; only the one mid-reply when it died gets an error
(never retried); a cancelled request stops waiting at once; the web's own upstream calls never
wait. A Redis that keeps the line (append-only file) restarts under requests waiting in line:
each is answered, once."""
import time
import uuid

import pytest
import requests

from chatbot.ops import procs
from chatbot.redis_keys import stream_key
from tests.conftest import Stack, migrated_app, serve
from tests.test_queue import (LONG, SHORT, Background, cancel, chat_body, queue_state,
                              running_id, wait_for)

PAUSE = 3.0  # seconds a part stays down: about what `chatbot up` takes to restart one


@pytest.fixture(scope="module")
def parts(tmp_path_factory, logs_dir):
    """A stack of its own: an engine and a persistent Redis that the tests restart, a
    worker, the app."""
    folder = tmp_path_factory.mktemp("outages")
    engine_port, redis_port = procs.free_port(), procs.free_port()
    engine, engine_url = procs.start_engine(engine_port, log=logs_dir / "outages-engine.log")
    redis_proc, redis_url = procs.start_redis(redis_port, log=logs_dir / "outages-redis.log",
                                              folder=folder)
    app, env = migrated_app(redis_url, engine_url, f"sqlite:///{folder / 'outages.db'}")
    worker = procs.start_worker(env, log=logs_dir / "outages-worker.log")
    procs.wait_until(lambda: app.extensions["celery"].control.ping(timeout=0.5), 60, worker,
                     "outages worker")
    server, url = serve(app)
    stack = Stack(app, url, env, worker)
    live = {"engine": engine, "redis": redis_proc}

    def kill(name):
        live[name].kill()  # SIGKILL, as a crash
        procs.stop(live[name])

    def restart(name):
        kill(name)
        time.sleep(PAUSE)
        live[name] = (procs.start_engine(engine_port, log=logs_dir / "outages-engine.log")[0]
                      if name == "engine" else
                      procs.start_redis(redis_port, log=logs_dir / "outages-redis.log",
                                        folder=folder)[0])

    stack.kill, stack.restart = kill, restart
    stack.start_engine = lambda: live.update(engine=procs.start_engine(
        engine_port, log=logs_dir / "outages-engine.log")[0])
    yield stack
    server.shutdown()
    procs.stop(worker)
    for proc in live.values():
        procs.stop(proc)


def busy(parts, sid):
    """A long streamed reply under way: its first tokens relayed."""
    rid = f"busy-{uuid.uuid4()}"
    reply = Background(parts.url, chat_body(LONG, sid), rid)
    wait_for(lambda: running_id(parts.url) == rid, what="a request to run")
    wait_for(lambda: parts.app.extensions["redis"].xlen(stream_key(rid)) >= 3,
             what="the first tokens")
    return rid, reply


def queued(parts, count):
    """`count` requests waiting in line, each in a session of its own: [(sid, rid, reply)]."""
    out = [(str(uuid.uuid4()), f"wait-{uuid.uuid4()}") for _ in range(count)]
    out = [(sid, rid, Background(parts.url, chat_body(SHORT, sid, stream=False), rid))
           for sid, rid in out]
    wait_for(lambda: queue_state(parts.url)["depth"] == count, what=f"{count} waiting")
    return out


def answered_once(parts, waiting):
    for sid, rid, reply in waiting:
        reply.join(120)
        assert reply.response.status_code == 200 and reply.lines[-1]["done"], reply.lines
        rows = parts.rows(sid)
        assert [(r.role, r.status, r.request_id) for r in rows] == [
            ("user", "ok", rid), ("assistant", "ok", rid)]
        assert rows[1].content == reply.lines[-1]["message"]["content"]


def test_waiting_requests_outlast_an_engine_restart_and_only_the_one_mid_reply_fails(parts):
    sid = str(uuid.uuid4())
    rid, running = busy(parts, sid)
    waiting = queued(parts, 3)
    parts.restart("engine")
    running.join(60)
    # Mid-reply when its engine died: an error line after the chunks it had, never retried.
    assert running.response.status_code == 200 and "error" in running.lines[-1], running.lines
    assert len(running.lines) > 1 and not any(line.get("done") for line in running.lines)
    rows = parts.rows(sid)
    assert [(r.role, r.status) for r in rows] == [("user", "ok"), ("assistant", "failed")]
    assert rows[1].request_id == rid
    # Waiting ones kept their turn through the restart.
    answered_once(parts, waiting)


def test_a_request_waiting_for_its_engine_stops_at_once_when_cancelled(parts):
    parts.kill("engine")
    try:
        rid = f"cancel-{uuid.uuid4()}"
        waiting = Background(parts.url, chat_body(SHORT, stream=False), rid)
        wait_for(lambda: running_id(parts.url) == rid, what="the request to run")
        time.sleep(1.5)  # past a plain call's retries: it waits for the engine
        assert waiting.is_alive() and running_id(parts.url) == rid
        cancelled = time.monotonic()
        assert cancel(parts, rid).status_code == 200
        waiting.join(10)
        assert waiting.response.status_code == 499, waiting.lines
        wait_for(lambda: running_id(parts.url) is None, timeout=3, what="the worker to let go")
        assert time.monotonic() - cancelled < 2.5
        # The web's own calls to the upstream never wait.
        asked = time.monotonic()
        assert requests.get(parts.url + "/api/tags", timeout=30).status_code == 503
        assert time.monotonic() - asked < 3
    finally:
        parts.start_engine()


def test_requests_waiting_in_line_outlast_a_restart_of_a_redis_that_keeps_them(parts):
    rid, running = busy(parts, str(uuid.uuid4()))
    waiting = queued(parts, 3)
    parts.restart("redis")
    answered_once(parts, waiting)
    running.join(60)  # its worker could not relay it: an error, not a hang
    assert not running.is_alive() and "error" in running.lines[-1], running.lines
    # The worker carries on: the next chat works.
    assert requests.post(parts.url + "/api/chat", timeout=120,
                         json=chat_body(SHORT, stream=False)).status_code == 200

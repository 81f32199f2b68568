"""Archiving idle sessions (with the clock moved), restoring on use, purging; and the archive
task run for real by a worker on the `maintenance` queue."""
import uuid
from datetime import timedelta

import ollama
import pytest

from chatbot.store import lifecycle
from chatbot.ops import procs
from chatbot.store import ChatSession, admin, db, open_session, transfer
from chatbot.store.models import utcnow
from tests.conftest import MODEL, OPTIONS


@pytest.fixture
def ctx(stack):
    with stack.app.app_context():
        yield stack.app


def make(n=1, **values):
    """A session of n messages (imported through append_messages), with columns set after."""
    sid = transfer.import_session({"threads": {"lifecycle": [
        {"role": "user", "content": f"m{i}"} for i in range(n)]}})["id"]
    if values:
        db.session.execute(db.update(ChatSession).where(ChatSession.id == sid).values(**values))
        db.session.commit()
    return sid


def state(sid):
    db.session.expire_all()  # another process (or statement) may have changed it
    session = db.session.get(ChatSession, sid)
    return session and (session.archived, session.last_access)


def test_archive_waits_for_the_timeout(ctx):
    sid = make()
    used = state(sid)[1]
    hours = ctx.config["SESSION_TIMEOUT_HOURS"]
    lifecycle.archive_idle(now=utcnow() + timedelta(hours=hours - 0.5))
    assert state(sid) == (False, used)
    # The clock moves past the timeout. (Every session in the shared database is archived
    # too: harmless, using one restores it.)
    assert lifecycle.archive_idle(now=utcnow() + timedelta(hours=hours + 0.5)) >= 1
    assert state(sid) == (True, used)  # archived, not touched otherwise


def test_archive_spares_a_session_used_meanwhile(ctx):
    sid = make(last_access=utcnow() - timedelta(days=30))
    ids, cutoff = lifecycle.find_idle(idle_hours=24)
    assert sid in ids
    open_session(sid)  # a request arrives between the scan and the update
    lifecycle.archive(ids, cutoff)
    assert state(sid)[0] is False


def test_chat_restores_an_archived_session(stack, ctx):
    sid = str(uuid.uuid4())
    client = ollama.Client(host=stack.url, headers={"X-Session-ID": sid})
    ask = lambda said: client.chat(MODEL, messages=[{"role": "user", "content": said}],  # noqa: E731
                                   options={**OPTIONS, "num_predict": 4}, stream=False)
    ask("Hi")
    long_ago = utcnow() - timedelta(days=3)
    db.session.execute(db.update(ChatSession).where(ChatSession.id == sid)
                       .values(archived=True, last_access=long_ago))
    db.session.commit()
    ask("Hi again")
    archived, last_access = state(sid)
    assert archived is False and last_access > long_ago + timedelta(days=2)
    assert len(stack.rows(sid)) == 4


def test_purge_deletes_only_old_archived_sessions(stack, ctx):
    long_ago = utcnow() - timedelta(days=5000)
    old = make(3, archived=True, last_access=long_ago)
    old_active = make(last_access=long_ago)
    young = make(archived=True, last_access=utcnow() - timedelta(days=2))
    assert lifecycle.purge(timedelta(days=4000)) >= 1
    assert state(old) is None and stack.rows(old) == []
    assert state(old_active) == (False, long_ago) and state(young)[0] is True
    assert len(stack.rows(young)) == 1


def test_purge_spares_a_session_used_meanwhile(ctx):
    sid = make(archived=True, last_access=utcnow() - timedelta(days=5000))
    ids, cutoff = lifecycle.find_purgeable(timedelta(days=4000))
    open_session(sid)  # used (so restored) after the scan
    assert sid in ids and lifecycle.delete_archived(ids, cutoff) == len(ids) - 1
    assert state(sid)[0] is False


def test_task_is_routed_and_scheduled(stack):
    celery = stack.app.extensions["celery"]
    route = celery.amqp.router.route({}, "chatbot.archive_idle_sessions")
    assert route["queue"].name == "maintenance"
    assert celery.amqp.router.route({}, "chatbot.run_next")["queue"].name == "ollama"
    entry = celery.conf.beat_schedule["archive-idle-sessions"]
    assert entry["task"] == "chatbot.archive_idle_sessions" and entry["schedule"] == 15 * 60


@pytest.fixture(scope="module")
def maintenance_worker(stack, logs):
    log = logs / "maintenance-worker.log"
    # Its own node name (click reads CELERY_WORKER_HOSTNAME), so it and the ollama worker
    # do not answer control commands as one.
    worker = procs.start_worker({**stack.env, "CELERY_WORKER_HOSTNAME": "maintenance@%h"},
                                queues="maintenance", log=log)
    yield worker, log
    procs.stop(worker)


def test_archive_task_runs_on_a_maintenance_worker(stack, ctx, maintenance_worker):
    from chatbot.store.lifecycle import archive_idle_sessions

    worker, log = maintenance_worker
    sid = make()
    hours = ctx.config["SESSION_TIMEOUT_HOURS"]
    future = admin.iso(utcnow() + timedelta(hours=hours + 1))
    archive_idle_sessions.delay(now=future)  # a string: task arguments travel as JSON
    procs.wait_until(lambda: state(sid)[0] is True, 60, worker, "maintenance worker")
    # That worker (not the ollama one) ran it; its log line follows the commit.
    procs.wait_until(lambda: "succeeded" in log.read_text(), 10, worker, "maintenance worker")
    assert "Task chatbot.archive_idle_sessions[" in log.read_text()
    assert "maintenance@" in log.read_text()

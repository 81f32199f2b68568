"""`chatbot up` runs the whole system with one command, restarts a crashed child, and leaves
nothing behind on SIGTERM or even SIGKILL."""
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import ollama

from chatbot.ops import launcher, procs
from tests.conftest import MODEL, OPTIONS


def descendants(pid):
    """Every live process below pid (children first started their own sessions)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_up_chats_and_stops_every_child(engine_url, tmp_path, logs):
    port = procs.free_port()
    env = {"OLLAMA_HOST": engine_url, "REDIS_URL": "",  # unset: the bundled redis-server
           "DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}"}
    up = procs.spawn([procs.bin_path("chatbot"), "up", "--port", str(port)], env=env,
                     log=logs / "up.log")
    try:
        url = f"http://127.0.0.1:{port}"
        procs.wait_until(lambda: procs.http_ok(url + "/"), 90, up, "chatbot up")
        reply = ollama.Client(host=url).chat(MODEL, messages=[{"role": "user", "content": "Hi"}],
                                             options=OPTIONS, stream=False)
        assert reply.done and reply.message.content
        children = descendants(up.pid)
        assert len(children) >= 4  # redis-server, worker (+ its pool child), web
        os.kill(up.pid, signal.SIGTERM)
        time.sleep(0.3)
        os.kill(up.pid, signal.SIGTERM)  # an impatient second signal must not orphan anything
        assert up.wait(30) == 0
        procs.wait_until(lambda: not any(alive(pid) for pid in children), 10, what="cleanup")
    finally:
        procs.stop(up)


@contextlib.contextmanager
def chatbot_up(engine_url, tmp_path, log):
    """`chatbot up` with the bundled redis-server, ready to chat, with every grandchild started:
    its welcome waits for the web to answer and for every worker (its pool and, for the
    maintenance worker, beat, started before it answers) to answer a broadcast."""
    port = procs.free_port()
    env = {"OLLAMA_HOST": engine_url, "REDIS_URL": "",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}"}
    up = procs.spawn([procs.bin_path("chatbot"), "up", "--port", str(port)], env=env, log=log)
    try:
        url = f"http://127.0.0.1:{port}"
        procs.wait_until(lambda: "Ctrl-C stops everything." in log.read_text(), 90, up,
                         "the welcome of chatbot up")
        yield up, url
    finally:
        procs.stop(up)


def gone_within(pids, seconds):
    procs.wait_until(lambda: not any(alive(pid) for pid in pids), seconds, what="cleanup")


def test_up_sigkilled_leaves_nothing_behind(engine_url, tmp_path, logs):
    with chatbot_up(engine_url, tmp_path, logs / "up-sigkill.log") as (up, url):
        children = descendants(up.pid)
        os.kill(up.pid, signal.SIGKILL)  # no clean-up at all: the kernel's parent-death signal
        assert up.wait(5) == -signal.SIGKILL
        gone_within(children, 5)


def test_two_sigterms_at_once_leave_nothing_behind(engine_url, tmp_path, logs):
    with chatbot_up(engine_url, tmp_path, logs / "up-sigterms.log") as (up, url):
        children = descendants(up.pid)
        os.kill(up.pid, signal.SIGTERM)
        os.kill(up.pid, signal.SIGTERM)
        assert up.wait(30) == 0
        gone_within(children, 10)


def ollama_worker(up):
    """The pid of the `ollama` queue's Celery main process, a direct child of up."""
    def info(pid):
        try:
            return (int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]),
                    Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
        except OSError:
            return None, []

    found = [pid for pid in descendants(up.pid)
             if info(pid)[0] == up.pid and b"ollama" in info(pid)[1]]
    assert len(found) == 1, found
    return found[0]


def test_killed_worker_is_restarted_and_the_next_chat_succeeds(engine_url, tmp_path, logs):
    log = logs / "up-restart.log"
    with chatbot_up(engine_url, tmp_path, log) as (up, url):
        old = ollama_worker(up)
        pool = descendants(old)  # a prefork pool's child; none with the threads pool
        os.kill(old, signal.SIGKILL)
        # No manual step: the chat waits in the queue until the restarted worker takes it.
        reply = ollama.Client(host=url, timeout=60).chat(
            MODEL, messages=[{"role": "user", "content": "Hi"}], options=OPTIONS, stream=False)
        assert reply.done and reply.message.content
        assert ollama_worker(up) != old
        assert not any(alive(pid) for pid in [old, *pool])
        text = log.read_text()
        assert f"worker ollama (pid {old}) was killed by SIGKILL" in text
        assert "restarting in 0.5 s" in text


def _supervise_crashing_child(monkeypatch, patient, restarts_wanted):
    """Up.supervise over one child that exits at once, with backoff shrunk to milliseconds:
    the exit code of supervise (None while it was still restarting) and the starts seen."""
    monkeypatch.setattr(launcher, "BACKOFF_FIRST", 0.01)
    monkeypatch.setattr(launcher, "BACKOFF_MAX", 0.04)
    starts = []

    def start():
        starts.append(time.monotonic())
        return procs.spawn([sys.executable, "-c", "import os; os.abort()"])  # SIGABRT, a crash

    up = launcher.Up("127.0.0.1", 0, 0)
    up.add("engine", start, patient=patient)
    result = {}

    def run():
        try:
            result["code"] = up.supervise()
        except launcher._Stopping:
            result["code"] = None

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    procs.wait_until(lambda: "code" in result or len(starts) > restarts_wanted, 60,
                     what="restarts")
    up.signalled = signal.SIGTERM
    thread.join(10)
    procs.stop(up.children[0].proc)
    return result.get("code", "hung"), starts


def test_a_crashing_engine_is_never_given_up_on(monkeypatch, capsys):
    wanted = launcher.GIVE_UP * 2
    code, starts = _supervise_crashing_child(monkeypatch, True, wanted)
    assert code is None and len(starts) > wanted  # stopped by the signal, not by giving up
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(gaps) < 1  # capped backoff (0.04 s here), never growing without bound
    err = capsys.readouterr().err
    assert "giving up" not in err and err.count("engine keeps crashing") == 1


def test_any_other_child_that_keeps_crashing_stops_everything(monkeypatch, capsys):
    code, starts = _supervise_crashing_child(monkeypatch, False, launcher.GIVE_UP * 2)
    assert code == 1 and len(starts) == launcher.GIVE_UP
    assert "giving up and stopping everything" in capsys.readouterr().err

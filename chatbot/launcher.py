"""The `chatbot` console script.

`chatbot up`      everything on one machine: Redis (REDIS_URL, else the bundled redis-server),
                  the upstream (OLLAMA_HOST if it answers, else the bundled engine), migrations,
                  one Celery worker and the web server. Ctrl-C or SIGTERM stops every child.
`chatbot engine`  the bundled Ollama-compatible engine alone.
"""
import argparse
import os
import signal
import sys
import time

from chatbot import procs
from chatbot.config import normalize_host

ENGINE_MODEL = "smollm2:135m"


def up(host, port, engine_port):
    children = []  # (name, process), stopped in reverse order whatever happens
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        env = {"REDIS_URL": _redis(children)}
        env.update(_upstreams(children, engine_port))
        os.environ.update(env)
        _migrate()
        for queue in _queues(len(env["OLLAMA_HOSTS"].split(",")) if "OLLAMA_HOSTS" in env else 1):
            children.append((f"worker {queue}", procs.start_worker(env, queues=queue)))
        # Session archiving: celery beat inside a small worker of its own queue.
        schedule = os.path.join(_instance(), "celerybeat-schedule")
        children.append(("maintenance", procs.start_worker(
            env, queues="maintenance", extra=("-B", "-s", schedule))))
        web = procs.spawn([sys.executable, "-m", "chatbot.launcher", "web", "--host", host,
                           "--port", str(port)], env=env)
        children.append(("web", web))
        url = f"http://{host}:{port}"
        procs.wait_until(lambda: procs.http_ok(url + "/"), 30, web, "web server")
        _welcome(url, env)
        while all(proc.poll() is None for _, proc in children):
            time.sleep(0.5)
        name = next(name for name, proc in children if proc.poll() is not None)
        print(f"{name} exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short and leave orphans.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for _, proc in reversed(children):
            procs.stop(proc)


def _redis(children):
    """REDIS_URL if set (it must answer), else the bundled redis-server as our child."""
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        if not procs.redis_ok(redis_url):
            sys.exit(f"REDIS_URL={redis_url} does not answer")
        return redis_url
    proc, redis_url = procs.start_redis(procs.free_port(),
                                        log=os.path.join(_instance(), "redis.log"))
    children.append(("redis", proc))
    return redis_url


def _upstreams(children, engine_port):
    """OLLAMA_HOSTS as given; else OLLAMA_HOST if an Ollama answers there; else the engine."""
    hosts = [normalize_host(h) for h in os.environ.get("OLLAMA_HOSTS", "").split(",") if h.strip()]
    if hosts:  # several upstreams: each gets its own queue and worker, no bundled engine
        return {"OLLAMA_HOSTS": ",".join(hosts)}
    ollama = normalize_host(os.environ.get("OLLAMA_HOST", "127.0.0.1:11434"))
    if procs.http_ok(ollama + "/api/version"):
        return {"OLLAMA_HOST": ollama}
    print(f"no Ollama at {ollama}: starting the bundled engine ({ENGINE_MODEL})", flush=True)
    proc, engine = procs.start_engine(engine_port)
    children.append(("engine", proc))
    return {"OLLAMA_HOST": engine, "DEFAULT_MODEL": os.environ.get("DEFAULT_MODEL") or ENGINE_MODEL}


def _welcome(url, env):
    model = os.environ.get("DEFAULT_MODEL") or "<model>"
    upstream = env.get("OLLAMA_HOSTS") or env.get("OLLAMA_HOST")
    print(f"\nchatbot is up at {url}  (upstream {upstream}, redis {env['REDIS_URL']})\n"
          f"  OLLAMA_HOST={url} ollama run {model}\n"
          f"  curl {url}/api/chat -d '{{\"model\": \"{model}\", "
          f"\"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}'\n"
          "Ctrl-C stops everything.", flush=True)


def _queues(count):
    from chatbot.routing import queue_name

    return [queue_name(i, count) for i in range(count)]


def _instance():
    """The app's instance folder (where SQLite lives by default), without building the app."""
    from flask import Flask

    path = Flask("chatbot").instance_path
    os.makedirs(path, exist_ok=True)
    return path


def _migrate():
    import flask_migrate

    from chatbot import create_app

    with create_app().app_context():
        flask_migrate.upgrade()


def web(host, port):
    """A threaded server for `chatbot up` (production runs gunicorn with gevent, see docker/)."""
    from werkzeug.serving import make_server

    from chatbot import create_app

    server = make_server(host, port, create_app(), threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


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
    p_web = sub.add_parser("web", help="serve the web app alone (threaded)")
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

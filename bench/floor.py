"""What one worker cannot avoid per request, measured on this machine beside the direct door
of bench/sidebyside.py: the parts a chat turn is made of, each alone, warm, one at a time.

    .venv/bin/python bench/floor.py [--calls 2000] [--clients 8] [--seconds 5]

- direct: requests per second straight to bench/fake_ollama.py (`--clients` at once), the
  figure sidebyside.py compares one worker with;
- upstream: one streamed chat through chatbot.upstream.Upstream (requests), one after another;
- writes: a turn's two commits (the request before the call, the reply after) through a
  Connection, on SQLite as `chatbot up` makes it (migrated, WAL, full-text triggers);
- redis: one round trip running one of the line's scripts (lua/emit.lua);
- web: a bare Flask view under gunicorn's gevent worker, as chatbot's web runs, requests per
  second and its CPU per request.
A worker runs one request at a time, so its upstream call, writes and one round trip at least
follow each other: their sum of wall time bounds what one worker can serve.
"""
import argparse
import os
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from sidebyside import Door, cpu_seconds, processes, start_fake, throughput  # noqa: E402

from chatbot.ops import procs  # noqa: E402

CHAT = {"model": "fake:latest", "messages": [{"role": "user", "content": "Hi"}]}


def bare():
    """The bare web: gunicorn's `floor:bare()`."""
    from flask import Flask, jsonify, request

    app = Flask("bare")

    @app.post("/api/chat")
    def chat():
        return jsonify({"model": request.get_json()["model"], "done": True,
                        "message": {"role": "assistant", "content": "Hello!"}})
    return app


def timed(calls, once):
    """(wall ms, CPU ms) per call of `once`, after a warm-up."""
    for _ in range(min(200, calls)):
        once()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        once()
    return ((time.perf_counter() - wall) * 1e3 / calls, (time.process_time() - cpu) * 1e3 / calls)


def parts(fake, redis_url, folder, calls):
    """{part: (wall ms, CPU ms)} of the upstream call, the turn's writes and a round trip."""
    os.environ.update(OLLAMA_HOST=fake, REDIS_URL=redis_url,
                      DATABASE_URL=f"sqlite:///{folder}/floor.db")
    from chatbot import create_app, store
    from chatbot.line.core import Line
    from chatbot.store.models import db, utcnow
    from chatbot.upstream import Upstream

    upstream = Upstream(fake)
    out = {"upstream": timed(calls, lambda: list(upstream.stream("/api/chat", CHAT)))}
    app = create_app()
    with app.app_context():
        store.upgrade()
        conn = db.engine.connect()

        def turn():
            sid, rid = str(uuid.uuid4()), str(uuid.uuid4())
            store.touch_session(sid, None, conn)
            tail = store.append_messages(sid, "fake:latest", [{"role": "user", "content": "Hi"}],
                                         rid, tail=(0, ""), conn=conn)
            store.save_reply(sid, "fake:latest", rid, {"content": "Hello!"}, "ok",
                             started_at=utcnow(), tail=tail, conn=conn)
        out["writes"] = timed(calls, turn)
        line = app.extensions["line"]
        emit = line.scripts["emit"]

        def trip():
            line.one_trip([emit.bound(info="floor:info", stream="floor:stream", request_id="r",
                                      event='{"t": "chunk"}', ttl=60, channel="floor",
                                      notice="{}")])
        out["redis"] = timed(calls, trip)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="chatbot-floor-")
    children = []
    try:
        fake_proc, fake = start_fake(folder)
        children.append(fake_proc)
        web_port, redis_port = procs.free_port(), procs.free_port()
        redis_proc, redis_url = procs.start_redis(redis_port, log=os.path.join(folder, "redis.log"))
        children.append(redis_proc)
        children.append(procs.spawn([procs.bin_path("gunicorn"), "-k", "gevent", "-w", "1", "-b",
                                     f"127.0.0.1:{web_port}", "--chdir", HERE, "floor:bare()"],
                                    log=os.path.join(folder, "web.log")))
        web = f"http://127.0.0.1:{web_port}"
        procs.wait_until(lambda: Door("bare web", web, "ollama").call(False), 30,
                         children[-1], "bare web")
        direct = throughput(Door("direct", fake, "ollama"), args.clients, args.seconds)
        measured = parts(fake, redis_url, folder, args.calls)
        workers = [pid for pid, (ppid, _) in processes().items() if ppid == children[-1].pid]
        before, began = cpu_seconds(workers), time.perf_counter()
        bare_rate = throughput(Door("bare web", web, "ollama"), args.clients, args.seconds)
        bare_cpu = (cpu_seconds(workers) - before) / (bare_rate * (time.perf_counter() - began))
        print(f"\ndirect door, {args.clients} at once: {direct:.0f} req/s "
              f"(50%: {direct / 2:.0f} req/s, {2e3 / direct:.2f} ms per request for one worker)")
        print("\n| part | wall per call | CPU per call |\n|---|---|---|")
        for name, (wall, cpu) in measured.items():
            print(f"| {name} | {wall:.3f} ms | {cpu:.3f} ms |")
        serial = sum(wall for wall, _ in measured.values())
        print(f"| bare Flask under gunicorn (gevent), {args.clients} at once | "
              f"{1e3 / bare_rate:.3f} ms ({bare_rate:.0f} req/s) | {bare_cpu * 1e3:.3f} ms |")
        print(f"\none worker doing only these, one after another: {serial:.2f} ms a request, at "
              f"most {1e3 / serial:.0f} req/s, {100e3 / serial / direct:.0f}% of the direct door")
    finally:
        for proc in reversed(children):
            procs.stop(proc)


if __name__ == "__main__":
    sys.exit(main())

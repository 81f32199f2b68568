"""How fair the line is, against first come first served, on the same machine and run.

    .venv/bin/python bench/fairness.py [--delay 0.05] [--burst 50] [--seconds 20]

Starts a Redis, the fake Ollama (bench/fake_ollama.py) taking `--delay` s per reply, one
worker, and two web processes (`chatbot web`) on the same line: one with QUEUE_ORDER=fair
(the default), one with QUEUE_ORDER=fifo. For each:

- burst: asker A queues `--burst` requests at once (one session), then B sends one. B's wait
  is reported in requests' time (the mean time the worker takes per request in this run).
- skewed: five askers (five sessions) keep 1, 2, 4, 8 and 16 requests in line for `--seconds`
  s; Jain's fairness index of the requests served to each, (sum x)^2 / (n * sum x^2): 1.0
  when all were served alike.
"""
import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import requests
from redis import Redis

from chatbot import create_app, store
from chatbot.ops import procs

MODEL = "fake:latest"


def chat(url, session_id):
    started = time.perf_counter()
    resp = requests.post(url + "/api/chat", timeout=600, json={
        "model": MODEL, "session_id": session_id, "stream": False,
        "messages": [{"role": "user", "content": "hi"}]})
    resp.raise_for_status()
    return time.perf_counter() - started


def burst(url, redis_url, count):
    """(B's wait in s, the mean time per request in s)."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    depth = lambda: Redis.from_url(redis_url).zcard("chatbot:waiting:ollama")  # noqa: E731
    done = []
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda: done.append(chat(url, a))) for _ in range(count)]
    for thread in threads:
        thread.start()
    while depth() < count - 2 and len(done) < count:  # A's requests are in line (one may run)
        time.sleep(0.005)
    waited = chat(url, b)
    for thread in threads:
        thread.join()
    per_request = (time.perf_counter() - started) / (count + 1)
    return waited, per_request


def skewed(url, seconds, shares=(1, 2, 4, 8, 16)):
    """Requests served to each asker while each keeps its share in line."""
    served = [0] * len(shares)
    stop = time.monotonic() + seconds
    counting = threading.Event()

    def client(asker, session_id):
        while time.monotonic() < stop:
            chat(url, session_id)
            if counting.is_set() and time.monotonic() < stop:
                served[asker] += 1

    threads = []
    for asker, share in enumerate(shares):
        session_id = str(uuid.uuid4())
        threads += [threading.Thread(target=client, args=(asker, session_id)) for _ in range(share)]
    for thread in threads:
        thread.start()
    time.sleep(min(2.0, seconds / 5))  # every asker has requests in line before counting
    counting.set()
    for thread in threads:
        thread.join()
    return served


def jain(xs):
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if any(xs) else 0.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.05, help="the fake's seconds per reply")
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    redis, redis_url = procs.start_redis(procs.free_port())
    fake_port = procs.free_port()
    children = [redis, procs.spawn([sys.executable, str(Path(__file__).with_name("fake_ollama.py")),
                                    "--port", str(fake_port), "--delay", str(args.delay)])]
    fake = f"http://127.0.0.1:{fake_port}"
    env = {"REDIS_URL": redis_url, "OLLAMA_HOST": fake,
           "DATABASE_URL": f"sqlite:////tmp/chatbot-fair-{uuid.uuid4().hex}.db"}
    try:
        app = create_app({"REDIS_URL": redis_url, "OLLAMA_HOST": fake,
                          "SQLALCHEMY_DATABASE_URI": env["DATABASE_URL"]})
        with app.app_context():
            store.upgrade()
        procs.wait_until(lambda: procs.http_ok(fake + "/api/version"), 30, children[1], "fake ollama")
        webs = {}
        for order in ("fair", "fifo"):
            port = procs.free_port()
            children.append(procs.spawn([procs.bin_path("chatbot"), "web", "--port", str(port)],
                                        env={**env, "QUEUE_ORDER": order}, cwd=procs.PROJECT_ROOT,
                                        log=f"/tmp/chatbot-fair-web-{order}.log"))
            webs[order] = f"http://127.0.0.1:{port}"
            procs.wait_until(lambda: procs.http_ok(webs[order] + "/"), 120, children[-1], "web")
        children.append(procs.start_worker(env, log="/tmp/chatbot-fair-worker.log"))
        chat(webs["fair"], str(uuid.uuid4()))  # the worker answers (and has warmed up)
        rows = []
        for order, url in webs.items():
            waited, per_request = burst(url, redis_url, args.burst)
            served = skewed(url, args.seconds)
            rows.append((order, waited, per_request, served, jain(served)))
        print(f"\nfake upstream: {args.delay * 1000:.0f} ms per reply; burst: A queues "
              f"{args.burst}, then B sends 1; skewed: five askers keep 1/2/4/8/16 in line for "
              f"{args.seconds:g} s\n")
        print("| order | B's wait | in requests' time | served per asker (1/2/4/8/16 in line) "
              "| Jain's index |")
        print("|---|---|---|---|---|")
        for order, waited, per_request, served, index in rows:
            print(f"| {order} | {waited * 1000:.0f} ms | {waited / per_request:.1f} "
                  f"| {' / '.join(map(str, served))} | {index:.3f} |")
        print(f"\nmean time per request: {statistics.mean(r[2] for r in rows) * 1000:.1f} ms")
    finally:
        for child in reversed(children):
            procs.stop(child)


if __name__ == "__main__":
    main()

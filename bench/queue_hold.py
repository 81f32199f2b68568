"""Clients waiting in line, held by one web process (`chatbot web`: gunicorn, one gevent
worker): its memory, and how fast it still answers /api/tags and /api/queue meanwhile.

    .venv/bin/python bench/queue_hold.py [--clients 10000] [--samples 200]

No worker consumes the queue, so every chat waits. The clients are bare sockets that send a
streaming chat and read nothing; at the end they hang up and the queue must empty again.
"""
import argparse
import json
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path

import requests
from redis import Redis

from chatbot.ops import procs

MODEL = "fake:latest"


def rss_mb(pid):
    """Resident memory of a process and its children (gunicorn's workers), in MB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        status = Path(f"/proc/{current}/status").read_text()
        total += int(next(l for l in status.splitlines() if l.startswith("VmRSS")).split()[1])
        for child in Path(f"/proc/{current}/task").glob("*/children"):
            todo += [int(c) for c in child.read_text().split()]
    return total / 1024


def waiting_client(port):
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def latencies(url, samples):
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        requests.get(url, timeout=30).raise_for_status()
        out.append((time.perf_counter() - started) * 1000)
    out.sort()
    return statistics.median(out), out[int(len(out) * 0.99) - 1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    redis, redis_url = procs.start_redis(procs.free_port())
    fake_port = procs.free_port()  # an instant upstream: what is measured is chatbot alone
    engine = procs.spawn([sys.executable, str(Path(__file__).with_name("fake_ollama.py")),
                          "--port", str(fake_port)])
    engine_url = f"http://127.0.0.1:{fake_port}"
    procs.wait_until(lambda: procs.http_ok(engine_url + "/api/version"), 30, engine, "fake ollama")
    port = procs.free_port()
    env = {"REDIS_URL": redis_url, "OLLAMA_HOST": engine_url, "MAX_QUEUE": str(args.clients + 10),
           "DATABASE_URL": f"sqlite:////tmp/chatbot-hold-{uuid.uuid4().hex}.db"}
    web = procs.spawn([procs.bin_path("chatbot"), "web", "--port", str(port)], env=env, cwd=procs.PROJECT_ROOT,
                      log="/tmp/chatbot-hold-web.log")
    url = f"http://127.0.0.1:{port}"
    depth = lambda: Redis.from_url(redis_url).zcard("chatbot:waiting:ollama")  # noqa: E731
    clients = []
    try:
        procs.wait_until(lambda: procs.http_ok(url + "/"), 60, web, "web")
        idle_rss = rss_mb(web.pid)
        quiet = latencies(url + "/api/tags", args.samples)
        clients = [waiting_client(port) for _ in range(args.clients)]
        procs.wait_until(lambda: depth() == args.clients, 300, web, "every client in line")
        # ... and every task sent: the web is done taking them in.
        procs.wait_until(lambda: Redis.from_url(redis_url).llen("ollama") == args.clients, 300,
                         web, "every task sent")
        held_rss = rss_mb(web.pid)
        tags, queue = latencies(url + "/api/tags", args.samples), latencies(url + "/api/queue", 50)
        print(f"{args.clients} clients waiting in line on one web process")
        print(f"memory   idle {idle_rss:7.1f} MB   holding {held_rss:7.1f} MB   "
              f"(+{(held_rss - idle_rss) * 1024 / args.clients:.0f} KB per waiting client)")
        print(f"/api/tags   quiet p50 {quiet[0]:6.2f} ms p99 {quiet[1]:6.2f} ms   "
              f"held p50 {tags[0]:6.2f} ms p99 {tags[1]:6.2f} ms")
        print(f"/api/queue  held p50 {queue[0]:6.2f} ms p99 {queue[1]:6.2f} ms "
              f"(lists all {args.clients})")
        for sock in clients:
            sock.close()
        started = time.monotonic()
        procs.wait_until(lambda: depth() == 0, 120, web, "the line to empty")
        print(f"all clients hung up: line empty after {time.monotonic() - started:.2f} s")
    finally:
        for sock in clients:
            sock.close()
        for proc in (web, engine, redis):
            procs.stop(proc)


if __name__ == "__main__":
    sys.exit(main())

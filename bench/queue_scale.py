"""Throughput of one Ollama host vs two, each with its own queue and concurrency-1 worker.

    .venv/bin/python bench/queue_scale.py [--requests 12] [--num-predict 48]

Starts two bundled engines (one thread each, so two hosts have two cores between them) and,
for each setup, `chatbot up` with OLLAMA_HOSTS naming one or both; sends the same burst of
concurrent chats (a new session each) and prints requests/s and generated tokens/s.
"""
import argparse
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from chatbot.ops import procs

MODEL = "smollm2:135m"


def burst(url, count, num_predict):
    def one(i):
        body = {"model": MODEL, "stream": False, "session_id": str(uuid.uuid4()),
                "messages": [{"role": "user", "content": f"Tell me a story about the number {i}."}],
                "options": {"temperature": 0, "seed": 42, "num_predict": num_predict}}
        return requests.post(url + "/api/chat", json=body, timeout=600).json()["eval_count"]

    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        tokens = sum(pool.map(one, range(count)))
    return time.perf_counter() - started, tokens


def run(hosts, count, num_predict):
    port = procs.free_port()
    env = {"OLLAMA_HOSTS": ",".join(hosts), "REDIS_URL": "",
           "DATABASE_URL": f"sqlite:////tmp/chatbot-scale-{uuid.uuid4().hex}.db"}
    up = procs.spawn([procs.bin_path("chatbot"), "up", "--port", str(port)], env=env,
                     log="/tmp/chatbot-scale-up.log")
    try:
        url = f"http://127.0.0.1:{port}"
        procs.wait_until(lambda: procs.http_ok(url + "/"), 120, up, "chatbot up")
        burst(url, len(hosts) * 2, 4)  # warm every host and worker
        return burst(url, count, num_predict)
    finally:
        procs.stop(up)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--num-predict", type=int, default=48)
    args = parser.parse_args()
    engines = [procs.start_engine(procs.free_port(), env={"CHATBOT_ENGINE_THREADS": "1"})
               for _ in range(2)]
    try:
        results = {}
        for label, hosts in (("one host", [engines[0][1]]), ("two hosts", [e[1] for e in engines])):
            seconds, tokens = run(hosts, args.requests, args.num_predict)
            results[label] = args.requests / seconds
            print(f"{label:9s}  {args.requests} requests in {seconds:6.2f} s   "
                  f"{args.requests / seconds:5.2f} req/s   {tokens / seconds:6.1f} tokens/s")
        print(f"speed-up two hosts : one host = {results['two hosts'] / results['one host']:.2f}")
    finally:
        for proc, _ in engines:
            procs.stop(proc)


if __name__ == "__main__":
    sys.exit(main())

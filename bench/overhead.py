"""What chatbot adds on top of the model: the same chat sent straight to the bundled engine and
through chatbot (web -> Celery -> flow -> engine), median of N runs each.

    .venv/bin/python bench/overhead.py [--runs 20] [--num-predict 32]

Starts `chatbot up` itself (bundled Redis and engine) on free ports and stops it at the end.
"""
import argparse
import statistics
import sys
import time
import uuid

import requests

from chatbot.ops import procs

MODEL = "smollm2:135m"


def timed_chat(url, body, headers=None):
    """(seconds to first content line, seconds to the last line) of one streamed chat."""
    start = time.perf_counter()
    first = None
    with requests.post(url + "/api/chat", json=body, headers=headers, stream=True, timeout=120) as r:
        r.raise_for_status()
        for line in r.iter_lines(chunk_size=None):
            if first is None and line:
                first = time.perf_counter() - start
    return first, time.perf_counter() - start


def overhead_histogram(web):
    """(count, sum) of chatbot's own proxy-overhead histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(web + "/metrics", timeout=10).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name.startswith("chatbot_proxy_overhead_seconds_") and not s.labels.get("le")}
    return (samples.get("chatbot_proxy_overhead_seconds_count", 0),
            samples.get("chatbot_proxy_overhead_seconds_sum", 0))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--num-predict", type=int, default=32)
    args = parser.parse_args()
    web_port, engine_port = procs.free_port(), procs.free_port()
    env = {"OLLAMA_HOST": f"127.0.0.1:{procs.free_port()}", "REDIS_URL": "",
           "DATABASE_URL": f"sqlite:////tmp/chatbot-bench-{uuid.uuid4().hex}.db"}
    up = procs.spawn([procs.bin_path("chatbot"), "up", "--port", str(web_port),
                      "--engine-port", str(engine_port)], env=env)
    try:
        web, engine = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{engine_port}"
        procs.wait_until(lambda: procs.http_ok(web + "/"), 180, up, "chatbot up")
        body = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2+2?"}],
                "options": {"temperature": 0, "seed": 42, "num_predict": args.num_predict}}
        timed_chat(engine, body)  # load the model once before measuring
        timed_chat(web, body)
        direct, proxied = [], []
        before = overhead_histogram(web)
        for _ in range(args.runs):  # interleaved so drift hits both alike
            direct.append(timed_chat(engine, body))
            proxied.append(timed_chat(web, body, {"X-Session-ID": str(uuid.uuid4())}))
        after = overhead_histogram(web)
        for name, index in (("time to first token", 0), ("total time", 1)):
            d = statistics.median(r[index] for r in direct) * 1000
            p = statistics.median(r[index] for r in proxied) * 1000
            print(f"{name:20s} direct {d:8.1f} ms   through chatbot {p:8.1f} ms   "
                  f"ratio {p / d:5.2f}   overhead {p - d:6.1f} ms")
        print(f"(median of {args.runs} runs each, num_predict {args.num_predict})")
        # The engine's own time varies by tens of ms from run to run; chatbot's metric takes
        # each request's model time (total_duration) off its own elapsed time.
        count, total = after[0] - before[0], after[1] - before[1]
        print(f"chatbot_proxy_overhead_seconds: mean {total / count * 1000:.1f} ms per request "
              f"over {count:.0f} requests (elapsed at the web minus queue wait minus the "
              "model's total_duration)")
    finally:
        procs.stop(up)


if __name__ == "__main__":
    sys.exit(main())

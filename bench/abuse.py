"""Abuse of a running `chatbot up` (#23). Part "crash and freeze": each heavy request that once
froze the web's event loop is sent once, while /api/tags is probed back to back; prints the
probes' p50/p99/max and the web's loop lag (chatbot_web_loop_lag_seconds) after each.

    python bench/abuse.py [--url http://127.0.0.1:8000] [--key KEY]

It starts nothing itself; every loop is bounded (one request per vector, probes until it ends).
"""
import argparse
import io
import json
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_freeze import export, inflating_pdf  # noqa: E402


def lag(url, headers):
    text = requests.get(url + "/metrics", headers=headers, timeout=30).text
    return max([float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("chatbot_web_loop_lag_seconds{")] or [float("nan")])


def freeze(url, name, send, headers):
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("resp", send()))
    probe, latencies = requests.Session(), []
    thread.start()
    started = time.perf_counter()
    while thread.is_alive() and time.perf_counter() - started < 300:
        t = time.perf_counter()
        probe.get(url + "/api/tags", headers=headers, timeout=60)
        latencies.append(time.perf_counter() - t)
    thread.join()
    took, ordered = time.perf_counter() - started, sorted(latencies) or [float("nan")]
    print(f"{name:<28} {done['resp'].status_code:>4} in {took:6.2f} s   /api/tags: "
          f"{len(latencies):4d} probes, p50 {ordered[len(ordered) // 2] * 1000:7.1f} ms, "
          f"p99 {ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000:7.1f} ms, "
          f"max {ordered[-1] * 1000:7.1f} ms   loop lag {lag(url, headers):.3f} s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", help="an API key, when keys are on")
    args = parser.parse_args()
    url, headers = args.url.rstrip("/"), {"Authorization": f"Bearer {args.key}"} if args.key else {}
    json_headers = {**headers, "Content-Type": "application/json"}
    imported = json.dumps(export(10_000)).encode()
    pdf = inflating_pdf(40_000)
    body = (b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "junk": ['
            + b",".join([b"0"] * 7_500_000) + b"]}")
    print("crash and freeze: the web's loop while each heavy request runs")
    freeze(url, "import of 10,000 messages", lambda: requests.post(
        url + "/api/sessions/import", data=imported, headers=json_headers, timeout=300), headers)
    freeze(url, f"PDF of {len(pdf)} B inflating", lambda: requests.post(
        f"{url}/api/sessions/{uuid.uuid4()}/documents", headers=headers, timeout=300,
        files={"file": ("bomb.pdf", io.BytesIO(pdf), "application/pdf")}), headers)
    freeze(url, "15 MB JSON to /api/chat", lambda: requests.post(
        url + "/api/chat", data=body, headers=json_headers, timeout=300), headers)


if __name__ == "__main__":
    main()

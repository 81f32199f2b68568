"""Abuse of a running `chatbot up` (#23). Part "crash and freeze": each format schema family that
once crashed the bundled engine is sent once (status, the error, and whether the engine's
process is still the same one: a restart is reported), then a plain chat must still succeed;
then each heavy request that once froze the web's event loop is sent once, while /api/tags is
probed back to back; prints the probes' p50/p99/max and the web's loop lag
(chatbot_web_loop_lag_seconds) after each.

    python bench/abuse.py [--url http://127.0.0.1:8000] [--key KEY] [--model smollm2:135m]
                              [--engine-url http://127.0.0.1:11435]

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


def engine_pids():
    """The bundled engine's processes on this machine (`chatbot engine`), by /proc."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"engine" in argv and any(a.endswith(b"chatbot") for a in argv[:2]):
            found.add(int(cmdline.parent.name))
    return found


SCHEMAS = {  # each crashed llama.cpp (SIGSEGV) before #23, or would with a larger bound
    "string maxLength 100000": {"type": "string", "maxLength": 100000},
    "string minLength 20000": {"type": "string", "minLength": 20000},
    "array maxItems 100000": {"type": "array", "items": {"type": "integer"}, "maxItems": 100000},
    "pattern a{1,50000}": {"type": "string", "pattern": "^a{1,50000}$"},
    "enum of 50000": {"enum": [f"v{i}" for i in range(50000)]},
    "objects nested 200 deep": json.loads('{"type":"object","properties":{"a":' * 200
                                          + '{"type":"string"}' + "}}" * 200),
}


def crash(url, headers, model, door="chatbot"):
    before = engine_pids()
    print(f"through {door} at {url}")
    print(f"engine processes before: {sorted(before) or 'none (an external Ollama?)'}")
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False,
            "options": {"num_predict": 8}}
    sends = [(f"format: {name}", "/api/chat", {**chat, "format": schema})
             for name, schema in SCHEMAS.items()]
    if door == "chatbot":  # the engine serves no /v1
        sends.append(("/v1 response_format maxLength", "/v1/chat/completions", {
            "model": model, "messages": chat["messages"], "max_tokens": 8, "response_format": {
                "type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMAS[
                    "string maxLength 100000"]}}}))
    restarts = 0
    for name, path, body in sends:
        t = time.perf_counter()
        try:
            resp = requests.post(url + path, json=body, headers=headers, timeout=300)
        except requests.ConnectionError as exc:  # the process behind url died
            print(f"{name:<32} connection dropped: {exc.__class__.__name__}")
            restarts += 1
            time.sleep(2)
            continue
        took, now = time.perf_counter() - t, engine_pids()
        restarted = bool(before) and now != before
        restarts += restarted
        error = resp.json().get("error", "") if resp.headers.get(
            "Content-Type", "").startswith("application/json") else resp.text
        error = error.get("message", error) if isinstance(error, dict) else error
        print(f"{name:<32} {resp.status_code:>4} in {took:5.2f} s  "
              f"{'ENGINE RESTARTED' if restarted else 'engine same'}  {str(error)[:70]}")
        before = now or before
    try:
        status = requests.post(url + "/api/chat", json=chat, headers=headers, timeout=300)
    except requests.ConnectionError:
        status = "no answer"
    print(f"a plain chat afterwards: {getattr(status, 'status_code', status)}; "
          f"engine restarts or deaths: {restarts}")


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
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--engine-url", help="the bundled engine too (chatbot up's upstream)")
    args = parser.parse_args()
    url, headers = args.url.rstrip("/"), {"Authorization": f"Bearer {args.key}"} if args.key else {}
    json_headers = {**headers, "Content-Type": "application/json"}
    imported = json.dumps(export(10_000)).encode()
    pdf = inflating_pdf(40_000)
    body = (b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "junk": ['
            + b",".join([b"0"] * 7_500_000) + b"]}")
    print("crash: every format schema family that once crashed the engine")
    crash(url, json_headers, args.model)
    if args.engine_url:  # the engine's own bounds, as if the web had let a schema through
        crash(args.engine_url.rstrip("/"), {}, args.model, door="the bundled engine")
    print("freeze: the web's loop while each heavy request runs")
    freeze(url, "import of 10,000 messages", lambda: requests.post(
        url + "/api/sessions/import", data=imported, headers=json_headers, timeout=300), headers)
    freeze(url, f"PDF of {len(pdf)} B inflating", lambda: requests.post(
        f"{url}/api/sessions/{uuid.uuid4()}/documents", headers=headers, timeout=300,
        files={"file": ("bomb.pdf", io.BytesIO(pdf), "application/pdf")}), headers)
    freeze(url, "15 MB JSON to /api/chat", lambda: requests.post(
        url + "/api/chat", data=body, headers=json_headers, timeout=300), headers)


if __name__ == "__main__":
    main()

"""Abuse of a running `chatbot up` (#23). Part "crash and freeze": each format schema family that
once crashed the bundled engine is sent once (status, the error, and whether the engine's
process is still the same one: a restart is reported), then a plain chat must still succeed;
then each heavy request that once froze the web's event loop is sent once, while /api/tags is
probed back to back; prints the probes' p50/p99/max and the web's loop lag
(chatbot_web_loop_lag_seconds) after each.

    python bench/abuse.py [--url http://127.0.0.1:8000] [--key KEY] [--model smollm2:135m]
                              [--engine-url http://127.0.0.1:11435]

Part "share" (#25), with two keys (--key-a, --key-b; --share alone skips the other parts): key A
chats in a loop (streamed, 4 tokens; its time to first token) while key B runs each vector in
turn: fill the line with resumable requests and hang up, one embed of 96 inputs, a document
upload, 1,000 SSE streams, 8 chats at once against the token budget, a never-ending
generation. A table: vector, A's p50/p95 against its baseline, A's errors, B's outcome. Start
the server with the keys, e.g. `API_KEYS=a=KEY_A,b=KEY_B TOKENS_PER_HOUR=10000 MAX_QUEUE=32
MAX_REQUEST_SECONDS=30 chatbot up` (A's own loop spends a few thousand tokens; B's 40
requests would fill a line of 32; B's 8 chats of 1,800 tokens overshoot 10,000).

It starts nothing itself; every loop is bounded (one request per vector, probes until it ends).
"""
import argparse
import collections
import io
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
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


ESSAY = [{"role": "user", "content": "Write a long essay about the history of the sea."}]


def first_token(url, headers, model):
    """A's turn: seconds to its first token (None and the error if it failed)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "stream": True,
            "options": {"num_predict": 4, "temperature": 0}}
    t = time.perf_counter()
    try:
        with requests.post(url + "/api/chat", json=body, headers=headers, stream=True,
                           timeout=600) as resp:
            if resp.status_code != 200:
                return None, f"{resp.status_code} {resp.text[:80]}"
            for line in resp.iter_lines():
                if line:
                    took = time.perf_counter() - t
                    chunk = json.loads(line)
                    if "error" in chunk:
                        return None, chunk["error"][:80]
                    resp.close()
                    return took, None
    except requests.RequestException as exc:
        return None, type(exc).__name__
    return None, "empty reply"


def a_meanwhile(url, headers, model, busy, least=10.0, most=180.0):
    """A chats while `busy()` (at least `least` s, at most `most`): its times and errors."""
    times, errors, started = [], [], time.monotonic()
    while (busy() or time.monotonic() - started < least) and time.monotonic() - started < most:
        took, error = first_token(url, headers, model)
        (times.append(took) if error is None else errors.append(error))
    return times, errors


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def b_fill(url, headers, model):
    codes = {}
    for _ in range(40):
        body = {"model": model, "messages": ESSAY, "stream": False, "resumable": True,
                "options": {"num_predict": 64}}
        try:
            code = requests.post(url + "/api/chat", json=body, headers=headers, timeout=0.3).status_code
        except requests.Timeout:
            code = "hung up"
        codes[code] = codes.get(code, 0) + 1
    return ", ".join(f"{n} x {code}" for code, n in codes.items())


def b_embed(url, headers, model):
    inputs = [" ".join(f"word{i}-{j}" for j in range(150)) for i in range(96)]
    t = time.perf_counter()
    resp = requests.post(url + "/api/embed", json={"model": "all-minilm", "input": inputs},
                         headers=headers, timeout=600)
    return f"{resp.status_code} in {time.perf_counter() - t:.1f} s"


def b_document(url, headers, model):
    text = "\n\n".join(f"Paragraph {i}: " + "the sea and its tides " * 40 for i in range(300))
    t = time.perf_counter()
    resp = requests.post(f"{url}/api/sessions/{uuid.uuid4()}/documents", headers=headers,
                         files={"file": ("sea.txt", io.BytesIO(text.encode()), "text/plain")},
                         timeout=600)
    return f"{resp.status_code} ({len(text) // 1000} KB) in {time.perf_counter() - t:.1f} s"


def b_streams(url, headers, model, hold=20.0):
    streams, refused = [], None
    for i in range(1000):
        try:
            resp = requests.get(f"{url}/api/events?channel=b-{i}-{uuid.uuid4()}", headers=headers,
                                stream=True, timeout=10)
        except requests.RequestException as exc:
            refused = type(exc).__name__
            break
        if resp.status_code != 200:
            refused = resp.status_code
            resp.close()
            break
        streams.append(resp)
    time.sleep(hold)
    for resp in streams:
        resp.close()
    return f"{len(streams)} held" + (f", then {refused}" if refused else "")


def b_budget(url, headers, model, each=1800, patience=120):
    """8 long chats at once (with TOKENS_PER_HOUR=10000: four or five fit, what B spent before
    counted); B hangs up on those not done after `patience` s."""
    body = {"model": model, "messages": ESSAY, "stream": False, "options": {"num_predict": each}}

    def send(_):
        try:
            resp = requests.post(url + "/api/chat", json=body, headers=headers, timeout=patience)
            if not resp.ok:
                return f"{resp.status_code} {resp.json().get('error', '')[:40]}", 0
            return resp.status_code, resp.json().get("eval_count", 0)
        except requests.Timeout:
            return "hung up", 0
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(send, range(8)))
    codes = collections.Counter(code for code, _ in replies)
    return (", ".join(f"{n} x {code}" for code, n in sorted(codes.items(), key=str))
            + f"; {sum(n for _, n in replies)} tokens in replies")


def b_endless(url, headers, model):
    body = {"model": model, "messages": ESSAY, "stream": True, "options": {"num_predict": -1}}
    t, last = time.perf_counter(), ""
    try:
        with requests.post(url + "/api/chat", json=body, headers=headers, stream=True,
                           timeout=(10, 60)) as resp:
            for line in resp.iter_lines():
                if line:
                    last = line.decode()
                if time.perf_counter() - t > 120:
                    return "still going after 120 s (client hung up)"
    except requests.RequestException as exc:
        return f"{type(exc).__name__} after {time.perf_counter() - t:.0f} s"
    end = json.loads(last) if last else {}
    return f"ended after {time.perf_counter() - t:.0f} s: " + (
        end.get("error", "")[:60] or f"done, {end.get('eval_count')} tokens")


VECTORS = {"fill the line, hang up (resumable)": b_fill, "one embed of 96 inputs": b_embed,
           "a document upload": b_document, "1,000 SSE streams": b_streams,
           "a never-ending generation": b_endless, "8 chats at once, budget": b_budget}


def share(url, key_a, key_b, model, only=""):
    a, b = {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}
    first_token(url, a, model)  # the model loaded
    base, errors = a_meanwhile(url, a, model, lambda: False, least=15.0)
    rows = [("A alone (baseline)", base, errors, "")]
    for name, vector in VECTORS.items():
        if only not in name:
            continue
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.setdefault("b", vector(url, b, model)))
        thread.start()
        times, errors = a_meanwhile(url, a, model, thread.is_alive)
        thread.join()
        rows.append((name, times, errors, outcome.get("b", "?")))
        time.sleep(2)
    print(f"{'vector':<36} {'A p50':>8} {'A p95':>8} {'x base':>7} {'A err':>6}  B's outcome")
    for name, times, errors, outcome in rows:
        ratio = pct(times, 0.95) / pct(base, 0.95)
        print(f"{name:<36} {pct(times, 0.5):7.2f}s {pct(times, 0.95):7.2f}s {ratio:6.1f}x "
              f"{len(errors):6d}  {outcome}" + (f"  [A: {errors[0]}]" if errors else ""))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", help="an API key, when keys are on")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--engine-url", help="the bundled engine too (chatbot up's upstream)")
    parser.add_argument("--key-a", help="the key that just chats (part share)")
    parser.add_argument("--key-b", help="the key that misbehaves (part share)")
    parser.add_argument("--share", action="store_true", help="part share alone")
    parser.add_argument("--only", default="", help="part share: the vectors whose name has it")
    args = parser.parse_args()
    if args.key_a and args.key_b:
        print("share: A chats while B misbehaves")
        share(args.url.rstrip("/"), args.key_a, args.key_b, args.model, args.only)
    if args.share:
        return
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

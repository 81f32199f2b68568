"""The line's orders on the bundled engine (#29): one seeded trace of askers replayed against
first come first served, the plain fair order and the new one (tokens, bands, warm order).

    PYTHONPATH=. .venv/bin/python bench/line.py [--seed 29] [--orders fifo,fair,new]
        [--repeat 1] [--cache-mb 256] [--engine-threads 1] [--max-loaded N]
        [--second-model-askers 1]

For each order it starts `chatbot up` on free ports (its own Redis, a fresh SQLite in a temp
dir, the bundled engine, keys on: one key per asker, AUTO_TITLES off so that only the trace
runs), warms both models with one request each, replays the trace, reads the engine's
/metrics before and after, and stops it. The trace (`--seed`), the same for every order:

- chat1..chat3: a conversation each (one session) that opens with ~850 tokens of notes, then
  short questions, to ~1,200 tokens of history; 0.5-3 s of thinking between turns;
- short: one-line questions in one session, 1-4 s of thinking;
- other: a conversation on a second model, `smollm2-b` (the same GGUF under another path in
  CHATBOT_ENGINE_MODELS: the engine loads it separately, and keeps up to
  ENGINE_MAX_LOADED_MODELS model files loaded: `--max-loaded 1` makes every swap a load);
- batch: five documents of ~1,650 tokens to summarize, back to back, a new session each;
- with `--second-model-askers K`, K-1 more conversations on the second model (other2, ...),
  made after the others so that theirs stay the same: then requests for both models wait
  together and an order can group them. Left at 1 (the default, the trace of the earlier
  figures), "other" has one request at a time, so each of its turns is a swap in and a
  swap out whatever the order.

Every turn is streamed (temperature 0, num_predict 16, num_ctx 4096 for every request of a
model, so nothing reloads). Orders: fifo (QUEUE_ORDER=fifo), fair (the defaults), new
(FAIR_COST=tokens, WARM_PASSES=2, WARM_WINDOW=8, WARM_SLOTS = the conversations of ~1,500
tokens that ENGINE_CACHE_MB holds at 23 KB a token, BATCH_KEYS=batch, BATCH_MAX_WAIT_SECONDS=60).

Figures, per order:
- cached share: the engine's prompt tokens reused from its cache / (reused + evaluated),
  during the trace; in brackets, of the tokens that could be reused: less each session's
  first prompt (an opening turn, a document), which no order can find in the cache;
- time to first token (what the streaming client waits from sending to the first chunk),
  p50/p95 per asker and overall;
- conversations' cached share: the same, over the conversation askers' requests only (chat*,
  short, other*; not the batch key's one-shot documents), from the engine's counters
  attributed to each request as it ran (bench/cache_share.py);
- model loads (final chunks with load_duration > 0; in brackets the engine's
  chatbot_engine_model_loads_total over the trace) and model switches (runs in the order the
  worker started them whose model differs from the run before: what a host that keeps one
  model loaded would load);
- wait / fair share, per asker: its requests' waits in line (started_at - queued_at) summed,
  over the waits a fair line of equal turns promises them: for each request, what the request
  running when it was admitted still had to run, plus its asker's own requests waiting
  then, plus a round of the other askers' waiting requests for each of those and one for
  itself (each request counted at what its run really took). 1.0: as fair as equal turns;
  the target is <= 2;
- ETA error: |start_in - actual| / actual, start_in read from GET /api/queue/<id> as soon as
  the request waits (polled every 50 ms from its admission), actual = its started_at - the
  time it was read; over requests that waited at least 1 s once read (for shorter waits the
  estimate's 0.1 s rounding alone is a large share). p50 and p90.

Prints markdown tables; every request's row goes to rows-<order>.json in the temp dir.
"""
import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.cache_share import Watch, share  # noqa: E402
from bench.chaos import ready  # noqa: E402
from bench.turn_cost import WORDS, document, figures  # noqa: E402
from chatbot.engine.models import default_model_path  # noqa: E402
from chatbot.ops import procs  # noqa: E402

MODEL, OTHER = "smollm2:135m", "smollm2-b"
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 16, "num_ctx": 4096}
TOKENS_PER_STATE_KB, LONGEST = 23, 1500  # what a kept prompt state costs; the longest thread
LOADS = "chatbot_engine_model_loads_total"


def trace(seed, second_model_askers=1):
    """[(asker, model, start delay, [(session, content, think after)])], the same per seed
    (more askers on the second model leave the others' the same)."""
    rng = random.Random(seed)

    def conversation(notes_words, turns, think):
        session, lines = str(uuid.UUID(int=rng.getrandbits(128))), []
        for k in range(turns):
            question = (f"Question {k + 1}: does the word {rng.choice(WORDS)} come before "
                        f"{rng.choice(WORDS)} in the notes? Answer in a few words.")
            if k == 0 and notes_words:
                question = f"Notes: {document(rng.getrandbits(32), notes_words)}\n\n{question}"
            lines.append((session, question, rng.uniform(*think)))
        return lines

    askers = [(f"chat{i}", MODEL, rng.uniform(0, 2), conversation(800, 8, (0.5, 3)))
              for i in (1, 2, 3)]
    askers.append(("short", MODEL, rng.uniform(0, 2), conversation(0, 10, (1, 4))))
    askers.append(("other", OTHER, rng.uniform(0, 2), conversation(300, 6, (0.5, 3))))
    askers.append(("batch", MODEL, 0.0, [
        (str(uuid.UUID(int=rng.getrandbits(128))), "Summarize this document in one line:\n\n"
         + document(rng.getrandbits(32), 1600), 0.0) for _ in range(5)]))
    askers += [(f"other{i}", OTHER, rng.uniform(0, 2), conversation(300, 6, (0.5, 3)))
               for i in range(2, second_model_askers + 1)]
    return askers


def watch(url, headers, rid, row, stop):
    """The request's first estimate once it waits (start_in) and when it was read."""
    while not stop.is_set():
        try:
            resp = requests.get(f"{url}/api/queue/{rid}", headers=headers, timeout=10)
        except requests.RequestException:
            resp = None
        if resp is not None and resp.status_code == 200:
            data = resp.json()
            if data.get("state") != "queued":
                return  # started before it was seen waiting
            if data.get("start_in") is not None:
                row.update(eta=data["start_in"], eta_read_at=time.time())
                return
        stop.wait(0.05)


def turn(url, key, asker, model, session, content):
    """One streamed chat; its row (times in epoch seconds)."""
    rid, headers = str(uuid.uuid4()), {"Authorization": f"Bearer {key}"}
    row, stop = {"asker": asker, "model": model, "session": session, "request_id": rid,
                 "sent_at": time.time()}, threading.Event()
    watcher = threading.Thread(target=watch, args=(url, headers, rid, row, stop), daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        with requests.post(url + "/api/chat", stream=True, timeout=900, json={
                "model": model, "messages": [{"role": "user", "content": content}],
                "stream": True, "options": OPTIONS},
                headers={**headers, "X-Session-ID": session, "X-Request-ID": rid}) as resp:
            row["status"] = resp.status_code
            for line in resp.iter_lines(chunk_size=None):
                if not line:
                    continue
                chunk = json.loads(line)
                if "error" in chunk:
                    row["error"] = str(chunk["error"])[:200]
                    break
                row.setdefault("ttft", time.perf_counter() - started)
                if chunk.get("done"):
                    row.update({k: chunk.get(k) for k in ("prompt_eval_count", "eval_count",
                                                          "load_duration")})
    except requests.RequestException as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"[:200]
    stop.set()
    watcher.join()
    info = requests.get(f"{url}/api/queue/{rid}", headers=headers, timeout=10).json()
    row.update({k: info.get(k) for k in ("state", "queued_at", "started_at", "finished_at")})
    return row


def replay(url, keys, askers):
    rows, lock = [], threading.Lock()

    def client(asker, model, delay, lines):
        time.sleep(delay)
        for session, content, think in lines:
            row = turn(url, keys[asker], asker, model, session, content)
            with lock:
                rows.append(row)
            time.sleep(think)

    threads = [threading.Thread(target=client, args=a, daemon=True) for a in askers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return rows


def run(order, settings, askers, cache_mb, threads, max_loaded=None):
    tmp = Path(tempfile.mkdtemp(prefix=f"chatbot-line-{order}-"))
    (tmp / "models").mkdir()
    (tmp / "models" / f"{OTHER}.gguf").symlink_to(default_model_path())
    names = [a[0] for a in askers]
    keys = {name: uuid.uuid4().hex for name in names}
    web_port, engine_port = procs.free_port(), procs.free_port()
    env = {"REDIS_URL": "", "OLLAMA_HOSTS": "", "DATABASE_URL": f"sqlite:///{tmp / 'line.db'}",
           "OLLAMA_HOST": f"http://127.0.0.1:{procs.free_port()}",  # nothing there: the engine
           "CHATBOT_ENGINE_MODELS": str(tmp / "models"), "ENGINE_CACHE_MB": str(cache_mb),
           "API_KEYS": ",".join(f"{n}={k}" for n, k in keys.items()), "AUTO_TITLES": "false",
           "MAX_QUEUE_PER_KEY": "0", **settings}
    if threads:
        env["CHATBOT_ENGINE_THREADS"] = str(threads)
    if max_loaded is not None:
        env["ENGINE_MAX_LOADED_MODELS"] = str(max_loaded)
    web, engine = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{engine_port}"
    up = procs.spawn([procs.bin_path("chatbot"), "up", "--port", web_port, "--engine-port",
                      engine_port], env=env, log=tmp / "up.log")
    try:
        procs.wait_until(lambda: ready(web), 180, up, "chatbot up")
        for model in (MODEL, OTHER):  # loads both and gives the estimate a run of each
            turn(web, keys[names[0]], "warmup", model, str(uuid.uuid4()), "hello")
        before, load, started = figures(engine), os.getloadavg()[0], time.time()
        with Watch(engine) as watch:
            rows = replay(web, keys, askers)
        took, after, load = time.time() - started, figures(engine), max(load, os.getloadavg()[0])
    finally:
        procs.stop(up, timeout=60)
    cached = {k: after[k] - before[k] for k in ("reused_tokens_total", "evaluated_tokens_total")}
    unattributed = watch.attribute(rows)
    loads = after[LOADS] - before[LOADS]
    (tmp / f"rows-{order}.json").write_text(json.dumps(
        {"engine_cache": cached, "unattributed": unattributed, "engine_loads": loads,
         "rows": rows}, indent=1))
    return {"rows": rows, "took": took, "load": load, "tmp": tmp, "cached": cached,
            "engine_loads": loads, "unattributed": unattributed}


def pct(values, q):
    values = sorted(v for v in values if v is not None)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def fair_ratios(rows):
    """{asker: its waits summed / the waits a fair line of equal turns promises them}."""
    done = [r for r in rows if r.get("started_at") and r.get("finished_at")]
    waited, promised = {}, {}
    for r in done:
        t = r["queued_at"]
        running = [x["finished_at"] - t for x in done
                   if x is not r and x["started_at"] <= t < x["finished_at"]]
        ahead = {}  # each asker's requests waiting when r came, their runs in arrival order
        for x in sorted(done, key=lambda x: x["queued_at"]):
            if x is not r and x["queued_at"] <= t < x["started_at"]:
                ahead.setdefault(x["asker"], []).append(x["finished_at"] - x["started_at"])
        # Equal turns: r's asker's own requests ahead, each a round of every other asker's
        # waiting requests, then r's own round: the runs those requests really took.
        own = ahead.pop(r["asker"], [])
        waited[r["asker"]] = waited.get(r["asker"], 0) + r["started_at"] - t
        promised[r["asker"]] = promised.get(r["asker"], 0) + sum(running) + sum(own) + sum(
            sum(runs[:len(own) + 1]) for runs in ahead.values())
    return {a: waited[a] / promised[a] if promised[a] > 0.05 else float("nan") for a in waited}


def summary(result):
    rows = result["rows"]
    ok = [r for r in rows if r.get("ttft") is not None and not r.get("error")]
    by_start = sorted((r for r in rows if r.get("started_at")), key=lambda r: r["started_at"])
    switches = sum(a["model"] != b["model"] for a, b in zip(by_start, by_start[1:]))
    errors = []
    for r in rows:
        if r.get("eta") is not None and r.get("started_at"):
            actual = r["started_at"] - r["eta_read_at"]
            if actual >= 1:
                errors.append(abs(r["eta"] - actual) / actual)
    c = result["cached"]
    firsts = {}  # each session's first prompt: never in the cache, whatever the order
    for r in sorted(rows, key=lambda r: r["sent_at"]):
        firsts.setdefault(r["session"], r.get("prompt_eval_count") or 0)
    return {
        "share": c["reused_tokens_total"] / max(1, sum(c.values())),
        "conversations": share([r for r in rows if r["asker"] != "batch"]),
        "engine_loads": result["engine_loads"],
        "later": c["reused_tokens_total"] / max(1, sum(c.values()) - sum(firsts.values())),
        "ttft": (pct([r["ttft"] for r in ok], 0.5), pct([r["ttft"] for r in ok], 0.95)),
        "loads": sum((r.get("load_duration") or 0) > 0 for r in rows), "switches": switches,
        "ratios": fair_ratios(rows), "eta": (pct(errors, 0.5), pct(errors, 0.9), len(errors)),
        "failed": len(rows) - len(ok), "requests": len(rows),
        "asker_ttft": {a: (pct([r["ttft"] for r in ok if r["asker"] == a], 0.5),
                           pct([r["ttft"] for r in ok if r["asker"] == a], 0.95))
                       for a in dict.fromkeys(r["asker"] for r in rows)},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--orders", default="fifo,fair,new")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the orders, in turn")
    parser.add_argument("--cache-mb", type=int, default=256)
    parser.add_argument("--engine-threads", type=int, default=1,
                        help="llama.cpp threads (0: all cores); 1 keeps a shared machine's "
                             "spin-waiting threads from slowing it tens of times")
    parser.add_argument("--max-loaded", type=int, default=None,
                        help="ENGINE_MAX_LOADED_MODELS for the engine (unset: its default, 3)")
    parser.add_argument("--second-model-askers", type=int, default=1,
                        help="conversations on the second model (1: the earlier figures' trace)")
    args = parser.parse_args()
    if args.second_model_askers < 1 or (args.max_loaded is not None and args.max_loaded < 0):
        parser.error("--second-model-askers must be 1 or more, --max-loaded 0 or more")
    slots = max(1, args.cache_mb * 1024 // (TOKENS_PER_STATE_KB * LONGEST))
    orders = {"fifo": {"QUEUE_ORDER": "fifo"}, "fair": {"QUEUE_ORDER": "fair"},
              "new": {"QUEUE_ORDER": "fair", "FAIR_COST": "tokens", "WARM_PASSES": "2",
                      "WARM_WINDOW": "8", "WARM_SLOTS": str(slots), "BATCH_KEYS": "batch",
                      "BATCH_MAX_WAIT_SECONDS": "60"}}
    askers = trace(args.seed, args.second_model_askers)
    bound = "default" if args.max_loaded is None else args.max_loaded
    print(f"trace seed {args.seed}: " + ", ".join(f"{a[0]} {len(a[3])} turns" for a in askers)
          + f"; ENGINE_CACHE_MB={args.cache_mb}, ENGINE_MAX_LOADED_MODELS={bound}, "
          f"new order WARM_SLOTS={slots}", flush=True)
    results = {}
    for round_ in range(args.repeat):
        for order in args.orders.split(","):
            result = run(order, orders[order], askers, args.cache_mb, args.engine_threads,
                         args.max_loaded)
            name = order if args.repeat == 1 else f"{order} #{round_ + 1}"
            results[name] = summary(result) | {k: result[k] for k in ("took", "load", "tmp")}
            s = results[name]
            print(f"{name}: {s['requests']} requests ({s['failed']} failed) in {s['took']:.0f} s, "
                  f"load avg up to {s['load']:.1f}; cache tokens unattributed "
                  f"{result['unattributed']}; rows in {s['tmp']}", flush=True)
    names = [a[0] for a in askers]
    print("\n| order | cached share (of later turns) | conversations' cached share "
          "| TTFT p50 / p95 | model loads (engine) / switches "
          "| worst wait / fair share | ETA error p50 / p90 (n) | run, load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for order, s in results.items():
        worst = max(s["ratios"].items(), key=lambda kv: kv[1] if kv[1] == kv[1] else -1)
        print(f"| {order} | {s['share']:.2f} ({s['later']:.2f}) | {s['conversations']:.2f} "
              f"| {s['ttft'][0]:.2f} / {s['ttft'][1]:.2f} s "
              f"| {s['loads']} ({s['engine_loads']:.0f}) / {s['switches']} "
              f"| {worst[1]:.1f} ({worst[0]}) "
              f"| {s['eta'][0]:.2f} / {s['eta'][1]:.2f} ({s['eta'][2]}) "
              f"| {s['took']:.0f} s, {s['load']:.1f} |")
    print("\nper asker: TTFT p50 / p95 (s), wait / fair share\n")
    print("| order | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for order, s in results.items():
        cells = [f"{s['asker_ttft'][a][0]:.2f} / {s['asker_ttft'][a][1]:.2f}, "
                 f"{s['ratios'].get(a, float('nan')):.1f}" for a in names]
        print(f"| {order} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""Generation speed of the bundled engine over HTTP vs llama-cpp-python called directly.

    .venv/bin/python bench/engine_speed.py [--runs 7] [--tokens 128]

Starts `chatbot engine` on a free port, streams /api/chat with a fixed prompt (temperature
0, fixed seed), and runs the same prompt with the same sampling through
`Llama.create_chat_completion(stream=True)` in this process. Runs alternate between the two
so that noise hits both alike; figures are medians. Decode speed is measured the same way
on both sides from the arrival of the first to the last content chunk: (chunks-1)/seconds.
The engine's own eval_count/eval_duration is printed too. Target: ratio >= 0.90.

llama.cpp's worker threads spin-wait, so with 2 threads on 2 cores any other busy process
slows both sides a lot and unevenly: the load average is printed, and the per-run figures
show whether a run was disturbed.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatbot.ops import procs  # noqa: E402
from chatbot.engine.models import (CTX_CAP, DEFAULT_NAME, default_model_path,  # noqa: E402
                                   default_threads)

PROMPT = "Write a long story about a brave knight who befriends a dragon."
SEED = 42


def start_engine(log):
    """The engine as a user runs it: the console script, else `python -m chatbot.ops.launcher`."""
    port = procs.free_port()
    if Path(procs.bin_path("chatbot")).exists():
        return procs.start_engine(port, log=log)
    proc = procs.spawn([sys.executable, "-m", "chatbot.ops.launcher", "engine", "--port", str(port)],
                       log=log)
    url = f"http://127.0.0.1:{port}"
    procs.wait_until(lambda: procs.http_ok(url + "/api/version"), 120, proc, "engine")
    return proc, url


def decode_rate(times):
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def engine_run(url, tokens):
    body = {"model": DEFAULT_NAME, "messages": [{"role": "user", "content": PROMPT}],
            "options": {"temperature": 0, "seed": SEED, "num_predict": tokens}}
    started = time.perf_counter()
    times, text, final = [], [], None
    with requests.post(url + "/api/chat", json=body, stream=True, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            chunk = json.loads(line)
            if chunk.get("done"):
                final = chunk
            elif chunk["message"]["content"]:
                times.append(time.perf_counter())
                text.append(chunk["message"]["content"])
    total = time.perf_counter() - started
    return {"text": "".join(text), "wall": decode_rate(times), "tokens": final["eval_count"],
            "reported": final["eval_count"] / final["eval_duration"] * 1e9,
            "end_to_end": final["eval_count"] / total}


def direct_run(llm, tokens):
    started = time.perf_counter()
    times, text = [], []
    # Ollama's default sampling, which the engine applies when the request sets nothing.
    for chunk in llm.create_chat_completion(
            messages=[{"role": "user", "content": PROMPT}], max_tokens=tokens, temperature=0,
            seed=SEED, top_k=40, top_p=0.9, min_p=0.0, repeat_penalty=1.1, stream=True):
        content = chunk["choices"][0]["delta"].get("content")
        if content:
            times.append(time.perf_counter())
            text.append(content)
    total = time.perf_counter() - started
    return {"text": "".join(text), "wall": decode_rate(times), "tokens": len(times),
            "end_to_end": len(times) / total}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    from llama_cpp import Llama

    from chatbot.engine.gguf import read_gguf

    path = default_model_path()
    n_ctx = min(read_gguf(path).context_length, CTX_CAP)
    threads = default_threads()
    log = Path(tempfile.gettempdir()) / "engine_speed.log"
    load_before = os.getloadavg()[0]
    proc, url = start_engine(str(log))
    try:
        engine_run(url, 8)  # load the model: loading is not what we measure
        llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                    n_threads_batch=threads, verbose=False)
        direct_run(llm, 8)
        engine, direct = [], []
        for _ in range(args.runs):
            engine.append(engine_run(url, args.tokens))
            direct.append(direct_run(llm, args.tokens))
    finally:
        procs.stop(proc)

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    print(f"model {path.name}  n_ctx {n_ctx}  threads {threads}  runs {args.runs}  "
          f"num_predict {args.tokens}  temperature 0  seed {SEED}")
    print(f"load average before/after  {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print("per run, wall-clock decode tok/s  engine: "
          + " ".join(f"{r['wall']:.0f}" for r in engine)
          + "   direct: " + " ".join(f"{r['wall']:.0f}" for r in direct))
    print(f"tokens generated           engine {med(engine, 'tokens'):.0f}   direct "
          f"{med(direct, 'tokens'):.0f}   same text: "
          f"{'yes' if engine[-1]['text'] == direct[-1]['text'] else 'NO'}")
    print(f"engine  eval_count/eval_duration      {med(engine, 'reported'):7.1f} tok/s")
    print(f"engine  wall-clock decode (HTTP)      {med(engine, 'wall'):7.1f} tok/s")
    print(f"direct  wall-clock decode (in-proc)   {med(direct, 'wall'):7.1f} tok/s")
    print(f"engine  end-to-end incl. prompt+HTTP  {med(engine, 'end_to_end'):7.1f} tok/s")
    print(f"direct  end-to-end incl. prompt       {med(direct, 'end_to_end'):7.1f} tok/s")
    ratio = med(engine, "wall") / med(direct, "wall")
    best = max(r["wall"] for r in engine) / max(r["wall"] for r in direct)
    print(f"ratio engine/direct (wall-clock decode) {ratio:.3f}  "
          f"(target >= 0.90: {'met' if ratio >= 0.90 else 'NOT met'})")
    print(f"ratio of best runs (least disturbed)    {best:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

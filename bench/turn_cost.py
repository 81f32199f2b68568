"""What a turn costs when conversations take turns on the bundled engine (#26).

Starts `chatbot engine` three times, without the prompt cache (ENGINE_CACHE_MB=0: only the
live context is reused, as before), with it, and with a budget too small for every
conversation's state (the LRU at work), and in each runs CONVERSATIONS conversations of
about 1,200 tokens taking turns for ROUNDS rounds (each turn: the whole history, a new
question, a short greedy reply, as chatbot sends it). Prints time to first token per turn
(what a streaming client waits), the first turn of each conversation apart (always cold),
against the same turn right after its own (the engine's best case, measured once per
conversation), and the cache's figures from the engine's /metrics.

    python bench/turn_cost.py [--conversations 4] [--rounds 10] [--cache-mb 256] [--small-mb 64]
"""
import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chatbot.ops import procs  # noqa: E402

MODEL = "smollm2:135m"
WORDS = ("river stone market winter lantern copper orchard signal harbor meadow thread "
         "engine pocket garden silver tunnel ribbon candle forest ladder window marble "
         "compass feather island basket mirror saddle violin canyon").split()


def document(seed, words=900):
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def turn(url, messages):
    """(seconds to the first token, the reply) of one streamed chat."""
    started, first, reply = time.perf_counter(), None, ""
    with requests.post(url + "/api/chat", stream=True, timeout=600, json={
            "model": MODEL, "messages": messages, "stream": True,
            "options": {"temperature": 0, "seed": 1, "num_predict": 12, "num_ctx": 4096}}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            chunk = json.loads(line)
            if first is None:
                first = time.perf_counter() - started
            reply += chunk.get("message", {}).get("content", "")
            if chunk.get("done"):
                return first, reply, chunk.get("prompt_eval_count")
    raise RuntimeError("no final chunk")


def figures(url):
    text = requests.get(url + "/metrics", timeout=10).text
    return {line.split()[0].replace("chatbot_engine_prompt_cache_", ""): float(line.split()[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def run(cache_mb, conversations, rounds):
    port = procs.free_port()
    log = Path(tempfile.gettempdir()) / f"turn_cost-engine-{cache_mb}.log"
    proc, url = procs.start_engine(port, log=log, env={"ENGINE_CACHE_MB": str(cache_mb)})
    try:
        histories = [[{"role": "system", "content": "Answer in a few words. Notes: "
                       + document(i)}] for i in range(conversations)]
        first_turns, later, own, tokens = [], [], [], 0
        for round_ in range(rounds):
            for history in histories:
                history.append({"role": "user", "content": f"Question {round_}: which word "
                                "comes first in the notes?"})
                took, reply, tokens = turn(url, history)
                (first_turns if round_ == 0 else later).append(took)
                history.append({"role": "assistant", "content": reply})
        for history in histories:  # right after its own turn: the engine's best case
            for question in ("And the last word?", "Thanks."):
                history.append({"role": "user", "content": question})
                took, reply, _ = turn(url, history)
                history.append({"role": "assistant", "content": reply})
            own.append(took)
        return first_turns, later, own, tokens, figures(url)
    finally:
        procs.stop(proc)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cache-mb", type=int, default=256)
    parser.add_argument("--small-mb", type=int, default=64,
                        help="a budget under the conversations' states: the LRU at work")
    args = parser.parse_args()
    print(f"{args.conversations} conversations taking turns, {args.rounds} rounds, {MODEL}")
    for cache_mb in (0, args.cache_mb, args.small_mb):
        first, later, own, tokens, cache = run(cache_mb, args.conversations, args.rounds)
        med = statistics.median
        print(f"ENGINE_CACHE_MB={cache_mb}: last prompt {tokens} tokens; time to first token: "
              f"first turns median {med(first):.2f} s; later turns (after other sessions') "
              f"median {med(later):.3f} s, max {max(later):.3f} s; a turn right after its "
              f"own median {med(own):.3f} s; ratio {med(later) / med(own):.1f}x")
        print(f"  cache: hits {cache['hits_total']:.0f}, misses {cache['misses_total']:.0f}, "
              f"loads {cache['loads_total']:.0f}, states {cache['states']:.0f}, "
              f"{cache['bytes'] / 2**20:.1f} MB of {cache['budget_bytes'] / 2**20:.0f} MB; "
              f"prompt tokens reused {cache['reused_tokens_total']:.0f}, "
              f"evaluated {cache['evaluated_tokens_total']:.0f}")


if __name__ == "__main__":
    main()

"""Embedding throughput of the bundled engine's all-minilm: chunks of ~200 tokens per second.

    .venv/bin/python bench/embed_speed.py [--chunks 64] [--batches 1,8,32]

Starts `chatbot engine` on a free port, loads all-minilm once (not timed), then embeds the
same distinct chunks through /api/embed, `batch` inputs per request, for each batch size,
and prints chunks/s and tokens/s (tokens as the engine counts them, [CLS] and [SEP]
included). The load average is printed: on 2 shared cores any other busy process shows.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine_speed import start_engine  # noqa: E402
from chatbot.ops import procs  # noqa: E402

WORDS = ("retrieval augmented generation splits each document into chunks embeds them and "
         "ranks the chunks by cosine similarity to the question before the model answers "
         "with the best ones in its prompt").split()


def chunk(i, words=170):
    """~200 WordPiece tokens of English, different for every i."""
    return f"Chunk {i}: " + " ".join(WORDS[(i + k * 7) % len(WORDS)] for k in range(words))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--batches", default="1,8,32")
    args = parser.parse_args()
    texts = [chunk(i) for i in range(args.chunks)]
    log = Path(tempfile.mkdtemp(prefix="embed-speed-")) / "engine.log"
    proc, url = start_engine(log)
    try:
        def embed(inputs):
            r = requests.post(url + "/api/embed", json={"model": "all-minilm", "input": inputs},
                              timeout=600)
            r.raise_for_status()
            return r.json()

        first = embed(texts[:1])
        print(f"load: {first['load_duration'] / 1e9:.2f} s; tokens per chunk: "
              f"{embed(texts[:4])['prompt_eval_count'] / 4:.0f}")
        for batch in (int(b) for b in args.batches.split(",")):
            started, tokens = time.perf_counter(), 0
            for i in range(0, len(texts), batch):
                tokens += embed(texts[i:i + batch])["prompt_eval_count"]
            seconds = time.perf_counter() - started
            print(f"batch {batch:>3}: {len(texts) / seconds:6.1f} chunks/s, "
                  f"{tokens / seconds:7.0f} tokens/s ({len(texts)} chunks in {seconds:.1f} s)")
        print(f"load average: {os.getloadavg()[0]:.2f}")
    finally:
        procs.stop(proc)


if __name__ == "__main__":
    main()

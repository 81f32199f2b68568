"""Retrieval (RAG): the time to chunk, embed and store a 1,000-chunk document, and the time to
search a session's chunks at 10k and 100k chunks.

    .venv/bin/python bench/retrieval.py [--model all-minilm] [--url http://host:port]
                                        [--sizes 10000,100000] [--chunks 1000] [--runs 5]

Indexing goes through the real path, chatbot.flow.flow.index_document (the index flow: chunk by our
tokens, /api/embed in batches, one commit), against the bundled engine started as the tests
start it (chatbot.ops.procs.start_engine), or --url; the text is generated (varied sentences),
cut into exactly 1,000 chunks of RAG_CHUNK_TOKENS. Chunking and storing are also timed on
their own; embedding is the rest.

Search uses synthetic unit vectors (384 dimensions, all-minilm's), not embeddings: the cost
of ranking does not depend on what the vectors mean. Two figures per size: numpy's ranking
over vectors already in memory, and what the Retrieve node does each turn (read the
session's chunks from SQLite, stack the vectors, rank), medians of --runs.
"""
import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatbot import create_app, store  # noqa: E402
from chatbot.flow import rag  # noqa: E402
from chatbot.flow.flow import index_document  # noqa: E402
from chatbot.ops import procs
from chatbot.store import documents as stored  # noqa: E402

DIM = 384
WORDS = ("river mountain engine bread volcano chess market winter harbour garden signal "
         "library copper orbit forest ledger violin glacier lantern compass meadow falcon "
         "quarry tide ember canyon beacon").split()


def text_of(chunks, size, overlap):
    """Varied sentences, long enough for exactly `chunks` chunks."""
    rng, parts = random.Random(7), []
    need = (chunks - 1) * (size - overlap) + size  # tokens: `chunks` windows, the last whole
    encoded = []
    while len(encoded) < need + 100:
        for _ in range(1000):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
            parts.append(words.capitalize() + ".")
        encoded = rag.encoding().encode(" ".join(parts))
    while True:  # a cut mid-word may re-encode to a token more or less: adjust until exact
        text = rag.encoding().decode(encoded[:need])
        got = len(rag.chunk(text, size, overlap, 10**9))
        if got == chunks:
            return text
        need += -1 if got > chunks else 1


def seconds(fn, runs):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def index(app, model, count, runs):
    config = app.config
    size, overlap = config["RAG_CHUNK_TOKENS"], config["RAG_CHUNK_OVERLAP"]
    text = text_of(count, size, overlap)
    with app.app_context():
        chunked = seconds(lambda: rag.chunk(text, size, overlap, 10**9), runs)
        pieces = rag.chunk(text, size, overlap, 10**9)
        started = time.perf_counter()
        doc = index_document(str(uuid.uuid4()), "bench.txt", text.encode(), "text/plain")
        total = time.perf_counter() - started
        vectors = rag.unit(np.random.default_rng(1).standard_normal(
            (len(pieces), DIM), dtype=np.float32))
        started = time.perf_counter()
        stored.add_document(str(uuid.uuid4()), None, "bench.txt", "text/plain", len(text),
                            model, pieces, vectors)
        store = time.perf_counter() - started
    print(f"index {count:,} chunks ({size} tokens, overlap {overlap}, {len(text):,} characters, "
          f"model {model}): {total:.2f} s in all, {doc['chunks'] / total:.0f} chunks/s")
    print(f"  chunking {chunked * 1000:.0f} ms, storing {store * 1000:.0f} ms, embedding "
          f"about {total - chunked - store:.2f} s ({rag.EMBED_BATCH} chunks a call)")


def search(app, sizes, runs):
    rng = np.random.default_rng(2)
    with app.app_context():
        for n in sizes:
            vectors = rag.unit(rng.standard_normal((n, DIM), dtype=np.float32))
            query = vectors[rng.integers(n)]
            sid = str(uuid.uuid4())
            stored.add_document(sid, None, "synthetic", "text/plain", 0, "synthetic",
                                [(f"chunk {i}", 2) for i in range(n)], vectors)
            in_memory = seconds(lambda: rag.rank(query, vectors, 3), runs)

            def per_turn():
                chunks, _ = stored.session_chunks(sid)
                rag.rank(query, rag.matrix([c["vector"] for c in chunks], DIM), 3)

            turn = seconds(per_turn, runs)
            print(f"search {n:>7,} chunks: numpy rank {in_memory * 1000:7.2f} ms, "
                  f"read from SQLite + rank {turn * 1000:8.1f} ms (median of {runs})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-minilm")
    parser.add_argument("--url", help="an Ollama to embed with (default: start the engine)")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--chunks", type=int, default=1000, help="chunks of the indexed document")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    proc, url = (None, args.url) if args.url else procs.start_engine(
        procs.free_port(), log=work / "engine.log")
    try:
        app = create_app({"OLLAMA_HOST": url, "EMBED_MODEL": args.model,
                          "MAX_DOCUMENT_CHUNKS": args.chunks,
                          "SQLALCHEMY_DATABASE_URI": f"sqlite:///{work / 'bench.db'}"})
        with app.app_context():
            store.upgrade()
        index(app, args.model, args.chunks, args.runs)
        search(app, [int(s) for s in args.sizes.split(",")], args.runs)
    finally:
        if proc:
            procs.stop(proc)


if __name__ == "__main__":
    main()

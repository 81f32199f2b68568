"""The cost of one more turn (storage + context build) as a session grows: 10, 1,000 and
10,000 stored messages. Runs the flow's own nodes in-process (everything but the model call)
against SQLite and Redis; the ratio 10,000 : 10 should stay under 1.5.

    .venv/bin/python bench/long_session.py [--turns 300] [--num-ctx 2048] [--sentences 8]

Messages are long enough (`--sentences`) that even the 10-message session fills the window,
so every case sends a context of the same size and the ratio isolates the session's length.
Turns are interleaved across the three sessions so that machine noise hits all alike; after
each turn the session is cut back to its size (untimed).
"""
import argparse
import statistics
import sys
import tempfile
import uuid

import flask_migrate

from chatbot import create_app, procs, store
from chatbot.tokens import count_tokens
from chatbot.flow.nodes import BuildContext, LoadSession, SizeWindow, StoreReply, StoreRequest
from chatbot.store import Message, db
from chatbot.store.models import utcnow

MODEL = "smollm2:135m"
SIZES = (10, 1_000, 10_000)
SENTENCE = "The tide came in over the flat grey sand while the gulls argued about the fish. "


class NoUpstream:
    host = "bench"


def fill(session_id, size, text):
    tokens = count_tokens({"content": text})
    store.open_session(session_id)
    store.append_messages(session_id, MODEL, [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i}: {text}", "tokens": tokens}
        for i in range(size)], "fill")


def turn(app, session_id, num_ctx, text):
    """One chat turn through the nodes; the model's reply stood in by a fixed text."""
    shared = {
        "job": {"request_id": str(uuid.uuid4()), "session_id": session_id, "kind": "chat",
                "model": MODEL, "messages": [{"role": "user", "content": text}],
                "upstream": {"options": {"num_ctx": num_ctx}}},
        "upstream": NoUpstream(), "windows": None, "started_at": utcnow(),
        "calibration": app.extensions["calibration"], "metrics": app.extensions["metrics"],
        "reserve": app.config["CONTEXT_REPLY_RESERVE"],
        "reply": {"content": text, "thinking": "", "tool_calls": [], "status": "ok"},
    }
    started = perf()
    for node in (LoadSession(), SizeWindow(), BuildContext(), StoreRequest(), StoreReply()):
        node.run(shared)
    return perf() - started, len(shared["context"])


def perf():
    import time

    return time.perf_counter()


def cut_back(session_id, size):
    newest = db.select(db.func.max(Message.id)).where(Message.session_id == session_id)
    db.session.execute(db.delete(Message).where(
        Message.session_id == session_id, Message.id > newest.scalar_subquery() - 2))
    db.session.commit()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--num-ctx", type=int, default=2048)  # Ollama's default window
    parser.add_argument("--sentences", type=int, default=8)
    args = parser.parse_args()
    text = SENTENCE * args.sentences
    redis, redis_url = procs.start_redis(procs.free_port())
    app = create_app({"REDIS_URL": redis_url,
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tempfile.mkdtemp()}/bench.db"})
    try:
        with app.app_context():
            flask_migrate.upgrade()
            sessions = {size: str(uuid.uuid4()) for size in SIZES}
            for size, session_id in sessions.items():
                fill(session_id, size, text)
            costs, sent = {size: [] for size in SIZES}, {}
            for _ in range(args.turns):
                for size, session_id in sessions.items():
                    cost, sent[size] = turn(app, session_id, args.num_ctx, text)
                    costs[size].append(cost * 1000)
                    cut_back(session_id, size)
        median = {size: statistics.median(c) for size, c in costs.items()}
        print(f"{count_tokens({'content': text})} tokens per message, num_ctx {args.num_ctx}, "
              f"{args.turns} turns per size, interleaved")
        for size in SIZES:
            print(f"{size:6d} stored messages: one more turn {median[size]:6.2f} ms median "
                  f"(p90 {sorted(costs[size])[int(args.turns * 0.9)]:6.2f} ms), "
                  f"{sent[size]} messages in the context")
        print(f"ratio 10,000 : 10 = {median[10_000] / median[10]:.2f} (target < 1.5)")
    finally:
        procs.stop(redis)


if __name__ == "__main__":
    sys.exit(main())

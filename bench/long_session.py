"""The cost of one more turn (storage + context build) as a session grows: 10, 1,000 and
10,000 stored messages. Runs the flow's own nodes in-process (everything but the model call)
against SQLite and Redis; the ratio 10,000 : 10 should stay under 1.5.

    .venv/bin/python bench/long_session.py [--turns 200] [--num-ctx 2048]
"""
import argparse
import statistics
import sys
import tempfile
import time
import uuid

from chatbot import create_app, procs, store
from chatbot.flow.context import count_tokens
from chatbot.flow.nodes import BuildContext, LoadSession, SizeWindow, StoreReply, StoreRequest
from chatbot.store import Message, db
from chatbot.store.models import utcnow

MODEL = "smollm2:135m"
SENTENCE = "The tide came in over the flat grey sand while the gulls argued about the fish."


def message(i):
    role = "user" if i % 2 == 0 else "assistant"
    return {"role": role, "content": f"{i}: {SENTENCE}", "tokens": count_tokens({"content": SENTENCE}) + 2}


class NoUpstream:
    host = "bench"


def turn(app, session_id, num_ctx, i):
    """One chat turn through the nodes, the model's reply stood in by a fixed text."""
    shared = {
        "job": {"request_id": str(uuid.uuid4()), "session_id": session_id, "kind": "chat",
                "model": MODEL, "messages": [{"role": "user", "content": f"turn {i}: {SENTENCE}"}],
                "upstream": {"options": {"num_ctx": num_ctx}}},
        "upstream": NoUpstream(), "windows": None, "started_at": utcnow(),
        "calibration": app.extensions["calibration"], "metrics": app.extensions["metrics"],
        "reserve": app.config["CONTEXT_REPLY_RESERVE"],
        "reply": {"content": SENTENCE, "thinking": "", "tool_calls": [], "status": "ok"},
    }
    for node in (LoadSession(), SizeWindow(), BuildContext(), StoreRequest(), StoreReply()):
        node.run(shared)
    return len(shared["context"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--num-ctx", type=int, default=2048)  # Ollama's default window
    args = parser.parse_args()
    redis, redis_url = procs.start_redis(procs.free_port())
    folder = tempfile.mkdtemp()
    app = create_app({"REDIS_URL": redis_url, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder}/b.db"})
    try:
        import flask_migrate

        results = {}
        with app.app_context():
            flask_migrate.upgrade()
            for size in (10, 1_000, 10_000):
                session_id = str(uuid.uuid4())
                store.open_session(session_id)
                store.append_messages(session_id, MODEL, [message(i) for i in range(size)], "fill")
                costs, sent = [], 0
                for i in range(args.turns):
                    started = time.perf_counter()
                    sent = turn(app, session_id, args.num_ctx, i)
                    costs.append(time.perf_counter() - started)
                    # Back to `size` messages, so every turn measures the same length (untimed).
                    db.session.execute(db.delete(Message).where(
                        Message.session_id == session_id, Message.id > db.select(
                            db.func.max(Message.id)).where(Message.session_id == session_id)
                        .scalar_subquery() - 2))
                    db.session.commit()
                results[size] = statistics.median(costs) * 1000
                print(f"{size:6d} stored messages: one more turn {results[size]:6.2f} ms median "
                      f"(p90 {sorted(costs)[int(len(costs) * 0.9)] * 1000:6.2f} ms), "
                      f"{sent} messages sent in the context")
        print(f"ratio 10,000 : 10 = {results[10_000] / results[10]:.2f} (target < 1.5)")
    finally:
        procs.stop(redis)


if __name__ == "__main__":
    sys.exit(main())

"""The cost of one more turn (storage + context build) as a session grows: 10, 1,000 and
10,000 stored messages. Runs the flow's own nodes in-process (everything but the model call)
against SQLite and Redis; the ratio 10,000 : 10 should stay under 1.5.

    .venv/bin/python bench/long_session.py [--turns 300] [--num-ctx 2048] [--sentences 8]

With --summarize: one session of --turns turns (200 is a fair long chat) through the whole
chat flow with CONTEXT_STRATEGY=summarize, against the bundled engine (started here, or
--host URL): how many turns summarized, and what they took against the other turns (median).

    .venv/bin/python bench/long_session.py --summarize --turns 200 [--num-ctx 1024]

Messages are long enough (`--sentences`) that even the 10-message session fills the window,
so every case sends a context of the same size and the ratio isolates the session's length.
Turns are interleaved across the three sessions so that machine noise hits all alike; after
each turn the session is cut back to its size (untimed).
"""
import argparse
import os
import statistics
import sys
import tempfile
import uuid

from chatbot import create_app, store
from chatbot.ops import procs
from chatbot.tokens import count_tokens
from chatbot.flow.flow import create_chat_flow
from chatbot.flow.nodes import BuildContext, LoadThread, SizeWindow, StoreRequest
from chatbot.flow.reply import StoreReply
from chatbot.flow.window import Windows
from chatbot.worker.tasks import summarizer
from chatbot.upstream import Upstream
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
    for node in (LoadThread(), SizeWindow(), BuildContext(), StoreRequest(), StoreReply()):
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


QUESTIONS = ("What should I plant next to the {} in a small garden?",
             "My neighbour says the {} needs more sun. Is that right?",
             "Give me one tip for keeping slugs off the {}.")
PLANTS = ("tomatoes", "beans", "lettuce", "roses", "basil", "carrots", "mint")


def summarized_session(app, host, turns, num_ctx, predict):
    """One session of `turns` chat turns through the whole flow, as the worker runs it. Returns
    per turn (seconds, whether it summarized, seconds of the summary call, truncated); on
    Ctrl-C, the turns done so far."""
    session_id, upstream, windows = str(uuid.uuid4()), Upstream(host), Windows()
    settings = summarizer(app.config)
    out = []
    try:
        for i in range(turns):
            out.append(one_turn(app, session_id, upstream, windows, settings, host, i, num_ctx,
                                predict))
            if (i + 1) % 20 == 0:
                print(f"{i + 1} turns, {sum(t[1] for t in out)} summarized", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"interrupted after {len(out)} turns", file=sys.stderr)
    return out


def one_turn(app, session_id, upstream, windows, settings, host, i, num_ctx, predict):
    """One chat turn through the whole flow, as the worker runs it."""
    text = "My name is Ada and I keep bees." if i == 0 else \
        QUESTIONS[i % 3].format(PLANTS[i % len(PLANTS)])
    options = {"temperature": 0, "seed": 42, "num_ctx": num_ctx, "num_predict": predict}
    job = {"request_id": str(uuid.uuid4()), "session_id": session_id, "kind": "chat",
           "model": MODEL, "messages": [{"role": "user", "content": text}],
           "upstream": {"model": MODEL, "options": options}, "host": host, "fresh": i == 0}
    ended = []
    shared = {"job": job, "started_at": utcnow(), "upstream": upstream, "windows": windows,
              "calibration": app.extensions["calibration"],
              "metrics": app.extensions["metrics"].batch(),
              "reserve": app.config["CONTEXT_REPLY_RESERVE"], "summarizer": settings,
              "emit": lambda event: None, "stop": lambda: False, "end": ended.append,
              "phase": lambda *args: None}
    started = perf()
    create_chat_flow().run(shared)
    took = perf() - started
    if ended[0].get("error"):
        raise SystemExit(f"turn {i}: {ended[0]['error']}")
    marks = shared["marks"]
    summarized = "SummarizeDropped" in marks
    call = marks["SummarizeDropped"] - marks["BuildContext"] if summarized else 0.0
    shared["metrics"].flush()
    return took, summarized, call, shared["dropped"] > 0


def report_summaries(turns, args):
    made = [t for t in turns if t[1]]
    others = [t for t in turns if not t[1] and t[3]]  # truncated turns that reused a summary
    plain = [t for t in turns if not t[3]]
    median = lambda rows, k=0: statistics.median(r[k] for r in rows) if rows else float("nan")  # noqa: E731
    print(f"{len(turns)} turns, num_ctx {args.num_ctx}, num_predict {args.predict}, "
          f"SUMMARY_MAX_TOKENS {args.summary_tokens}, bundled engine ({MODEL})")
    first = next((i for i, t in enumerate(turns) if t[3]), None)
    print(f"first truncated turn: {first}; turns that summarized: {len(made)} "
          f"({len(made) / max(1, len(turns) - (first or 0)):.0%} of the turns from there)")
    print(f"median turn: {median(made):.2f} s summarizing, {median(others):.2f} s reusing a "
          f"summary, {median(plain):.2f} s before any truncation")
    print(f"extra on a summarizing turn: {median(made) - median(others):+.2f} s median "
          f"(the summary call itself: {median(made, 2):.2f} s median, "
          f"max {max((t[2] for t in made), default=0):.2f} s)")
    print(f"whole session: {sum(t[0] for t in turns):.0f} s")


def summarize_main(args):
    os.environ.update(CONTEXT_STRATEGY="summarize", SUMMARY_MAX_TOKENS=str(args.summary_tokens))
    redis, redis_url = procs.start_redis(procs.free_port())
    engine, host = (None, args.host) if args.host else procs.start_engine(
        procs.free_port(), log=f"{tempfile.mkdtemp()}/engine.log")
    app = create_app({"REDIS_URL": redis_url, "OLLAMA_HOST": host,
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tempfile.mkdtemp()}/bench.db"})
    try:
        with app.app_context():
            store.upgrade()
            report_summaries(summarized_session(app, host, args.turns, args.num_ctx,
                                                args.predict), args)
    finally:
        procs.stop(redis)
        if engine:
            procs.stop(engine)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--num-ctx", type=int, default=2048)  # Ollama's default window
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--summarize", action="store_true")
    parser.add_argument("--predict", type=int, default=32, help="num_predict (--summarize)")
    parser.add_argument("--summary-tokens", type=int, default=96, help="SUMMARY_MAX_TOKENS")
    parser.add_argument("--host", help="an Ollama host instead of the bundled engine (--summarize)")
    args = parser.parse_args()
    if args.summarize:
        return summarize_main(args)
    text = SENTENCE * args.sentences
    redis, redis_url = procs.start_redis(procs.free_port())
    app = create_app({"REDIS_URL": redis_url,
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tempfile.mkdtemp()}/bench.db"})
    try:
        with app.app_context():
            store.upgrade()
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

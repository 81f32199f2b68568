"""CONTEXT_STRATEGY=summarize: dropped history summarized by the bundled engine, stored apart
from the thread, sent in place of the truncation note, extended rather than redone; a failing
summary falls back to the note.

The stack tests run their own Redis, worker and web with the strategy on. Between chatbot and
the real engine sits a tap that forwards every request as it is and keeps its body, so a test
can read what the model was sent."""
import contextlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from chatbot.ops import procs
from chatbot.flow.context import (NOTE, PER_MESSAGE, SUMMARIZE, SUMMARY, cost, fit_summarized,
                                  summary_message, summary_request, summary_room)
from tests.conftest import MODEL, own_stack

SAY = ("Tell me one more thing about the sea: its tides, its currents, the creatures of the "
       "shore, the boats in the harbour and the lighthouse keeper who watches them, please.")
OPTIONS = {"temperature": 0, "seed": 42, "num_ctx": 512, "num_predict": 8}


def msg(seq, role, tokens):
    return {"seq": seq, "role": role, "content": f"m{seq}", "tokens": tokens}


# --- the pure parts ---------------------------------------------------------------------------

def test_a_summary_is_made_for_exactly_what_is_left_out_and_leaves_room_free():
    system = [msg(1, "system", 6)]
    stored = [system[0]] + [msg(s, "user" if s % 2 else "assistant", 16) for s in range(2, 22)]
    new = [{"role": "user", "content": "now", "tokens": 6}]
    room = summary_room(40)
    budget = 300
    context, used, dropped, span = fit_summarized(system, stored[::-1], new, budget, 21, None, room)
    kept = [m for m in context if m.get("seq", 0) > 1]
    assert context[0] is system[0] and context[1]["content"].startswith("Note:")  # the placeholder
    assert span == (2, kept[0]["seq"] - 1)  # everything between the system message and the kept
    assert [m["seq"] for m in kept] == list(range(kept[0]["seq"], 22))
    assert dropped == 21 - 1 - len(kept) == span[1] - span[0] + 1
    # The room for the summary is kept, and a quarter of the history's room freed besides.
    history = sum(cost(m) for m in kept)
    assert history <= (budget - cost(system[0]) - cost(new[0]) - room) * 0.75
    assert used == cost(system[0]) + cost(new[0]) + cost(context[1]) + history


def test_a_summary_is_reused_until_more_is_left_out():
    system = [msg(1, "system", 6)]
    summary = {"id": 1, "content": SUMMARY + "the user is Ada", "tokens": 12, "first_seq": 2,
               "last_seq": 10}
    newer = [msg(s, "user", 16) for s in range(21, 10, -1)]  # 11 messages after the summary
    new = [{"role": "user", "content": "now", "tokens": 6}]
    fits = sum(cost(m) for m in system + new + newer) + 12 + PER_MESSAGE
    context, used, dropped, span = fit_summarized(system, newer, new, fits, 21, summary, 60)
    assert span is None and used == fits and dropped == 9
    assert context[1]["content"] == summary["content"]
    assert [m["seq"] for m in context[2:-1]] == list(range(11, 22))
    # One token short: the newest summary is extended from message 11 on, never redone.
    _, _, _, span = fit_summarized(system, newer, new, fits - 1, 21, summary, 60)
    assert span[0] == 11 and 11 <= span[1] < 21


def test_the_summary_request_extends_the_previous_one_with_the_span_only():
    previous = SUMMARY + "The user is called Ada."
    span = [msg(s, "user", 30) for s in range(11, 16)]
    body, shown = summary_request("m", previous, span, 40, {"num_ctx": 512, "top_k": 3}, 10_000)
    prompt = body["messages"][1]["content"]
    assert shown == 5 and "The user is called Ada." in prompt and SUMMARY not in prompt
    assert [line for line in prompt.splitlines() if line.startswith("user: ")] == \
        [f"user: m{s}" for s in range(11, 16)]
    assert body["stream"] is True and body["options"]["num_predict"] == 40
    assert body["options"]["num_ctx"] == 512 and "top_k" not in body["options"]
    # A span too long for the window: its newest messages are shown.
    _, shown = summary_request("m", None, span, 40, {}, 40 + 2 * (30 + PER_MESSAGE) + 80)
    assert 0 < shown < 5


def test_a_summary_longer_than_its_room_is_cut():
    message = summary_message("word " * 500, 40)
    assert message["content"].startswith(SUMMARY) and cost(message) <= summary_room(40)


# --- on the real stack ------------------------------------------------------------------------

class Tap:
    """Forwards every request to the engine as it is and keeps (path, JSON body) of each POST."""

    def __init__(self, engine_url):
        self.engine, self.seen = engine_url, []
        self.hold_summaries, self.trickled = False, []  # summaries that never end, and how
        tap = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self, method):
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if method == "POST" and data:
                    tap.seen.append((self.path, json.loads(data)))
                    if tap.hold_summaries and tap.chats(len(tap.seen) - 1)[0]:
                        return self._trickle()
                resp = requests.request(method, tap.engine + self.path, data=data, timeout=300,
                                        headers={"Content-Type": "application/json"})
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers.get("Content-Type", "text/plain"))
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(b"" if method == "HEAD" else resp.content)

            def _trickle(self):
                """A summary that never ends: a token every 0.2 s for a minute (chunked, as
                Ollama streams)."""
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.close_connection = True
                line = json.dumps({"model": MODEL, "done": False,
                                   "message": {"role": "assistant", "content": "so "}}) + "\n"
                try:
                    for _ in range(300):
                        self.wfile.write(f"{len(line):x}\r\n{line}\r\n".encode())
                        self.wfile.flush()
                        time.sleep(0.2)
                    tap.trickled.append("ended")
                except OSError:  # the worker hung up: the summary was stopped
                    tap.trickled.append("stopped")

            def do_GET(self):
                self._forward("GET")

            def do_HEAD(self):
                self._forward("HEAD")

            def do_POST(self):
                self._forward("POST")

            def do_DELETE(self):
                self._forward("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", procs.free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def chats(self, since=0, until=None):
        """The /api/chat bodies seen[since:until]: (summary requests, the turns' own)."""
        bodies = [body for path, body in self.seen[since:until] if path == "/api/chat"]
        asks = [b for b in bodies if b["messages"][0].get("content") == SUMMARIZE]
        return asks, [b for b in bodies if b not in asks]


@contextlib.contextmanager
def summarizing_stack(engine_url, tmp_path, logs_dir, name, **settings):
    """Redis, a worker and the web of their own, the worker summarizing, all through a Tap."""
    tap = Tap(engine_url)
    try:
        with own_stack(tap.url, tmp_path, logs_dir, name, CONTEXT_STRATEGY="summarize",
                       **settings) as (app, url):
            yield app, url, tap
    finally:
        tap.server.shutdown()


class Turn:
    """One chat turn, with what its SSE channel and GET /api/queue/<id> said meanwhile."""

    def __init__(self, url, sid, content):
        rid = str(uuid.uuid4())
        events = requests.get(f"{url}/api/events?channel={rid}", stream=True, timeout=120)
        self.phases, done = set(), threading.Event()

        def poll():
            while not done.is_set():
                self.phases.add(requests.get(f"{url}/api/queue/{rid}", timeout=5).json().get("phase"))
                done.wait(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            self.reply = requests.post(f"{url}/api/chat", timeout=120, headers={"X-Request-ID": rid},
                                       json={"model": MODEL, "session_id": sid, "stream": False,
                                             "options": OPTIONS,
                                             "messages": [{"role": "user", "content": content}]})
        finally:
            done.set()
            poller.join()
        self.events = []
        for line in events.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                self.events.append(line.split(":", 1)[1].strip())
                if self.events[-1] in ("done", "error"):
                    break
        events.close()


def summaries(app, sid):
    from chatbot.store import Summary, db

    with app.app_context():
        return [(s.id, s.first_seq, s.last_seq, s.content, s.previous_id) for s in db.session.execute(
            db.select(Summary).where(Summary.session_id == sid).order_by(Summary.id)).scalars()]


def thread(app, sid):
    """{seq: content} of the session's replayed thread, and its transcript of seqs a..b."""
    from chatbot.store import Message, db

    with app.app_context():
        rows = db.session.execute(db.select(Message.seq, Message.role, Message.content).where(
            Message.session_id == sid, Message.seq.is_not(None))).all()
    transcript = lambda a, b: "\n".join(  # noqa: E731
        f"{r.role}: {r.content}" for r in sorted(rows) if a <= r.seq <= b)
    return {r.seq: r.content for r in rows}, transcript


def test_dropped_history_is_summarized_once_sent_and_extended(engine_url, tmp_path, logs_dir):
    with summarizing_stack(engine_url, tmp_path, logs_dir, "summarize",
                           SUMMARY_MAX_TOKENS="40") as (app, url, tap):
        sid = str(uuid.uuid4())
        turns = [Turn(url, sid, "My name is Ada and I keep bees. Please remember it.")]
        marks = [0]  # where each turn's requests start in tap.seen
        while len(summaries(app, sid)) < 2 and len(turns) < 30:
            marks.append(len(tap.seen))
            turns.append(Turn(url, sid, f"{len(turns)}. {SAY}"))
            assert turns[-1].reply.status_code == 200, turns[-1].reply.text
        marks.append(len(tap.seen))
        said = lambda i: tap.chats(marks[i], marks[i + 1])  # noqa: E731
        made = summaries(app, sid)
        assert len(made) == 2, f"{len(turns)} turns made {len(made)} summaries"
        (first_id, first_from, first_to, first_text, first_prev), \
            (second_id, second_from, second_to, second_text, second_prev) = made
        seqs, transcript = thread(app, sid)

        # The turn that made the first summary sent it in place of exactly the span it covers.
        at = next(i for i, t in enumerate(turns) if "summarizing" in t.events)
        assert all(len(said(i)[0]) == 0 for i in range(at))  # nothing summarized before
        asked, sent = said(at)
        assert len(asked) == 1 and len(sent) == 1
        assert asked[0]["messages"][1]["content"] == "Conversation:\n" + transcript(1, first_to)
        messages = sent[0]["messages"]
        assert messages[0] == {"role": "system", "content": first_text}
        assert first_from == 1 and first_text.startswith(SUMMARY)
        # Everything from the first message to first_to is left out, everything after is sent.
        new_seq = next(s for s, content in seqs.items() if content == f"{at}. {SAY}")
        assert [m["content"] for m in messages[1:]] == [seqs[s] for s in range(first_to + 1, new_seq + 1)]
        assert "summarizing" in turns[at].phases and "summarized" in turns[at].events
        assert turns[at].events.index("summarizing") < turns[at].events.index("done")

        # The next turn reuses it: no summary request, the same summary first in its prompt.
        asked, sent = said(at + 1)
        assert asked == [] and "summarizing" not in turns[at + 1].events
        assert sent[0]["messages"][0] == {"role": "system", "content": first_text}

        # The second summary extends the first: its request carries the first summary and
        # only the messages after it; it covers from the same start to a later message.
        assert (second_prev, second_from) == (first_id, first_from) and second_to > first_to
        second_at = next(i for i, t in enumerate(turns) if "summarizing" in t.events and i > at)
        asked, sent = said(second_at)
        assert asked[0]["messages"][1]["content"] == (
            f"Summary so far: {first_text.removeprefix(SUMMARY)}\n\n"
            f"Conversation:\n{transcript(first_to + 1, second_to)}")
        assert sent[0]["messages"][0] == {"role": "system", "content": second_text}

        # Apart from the thread: the sessions API lists it beside the messages, not among them.
        shown = requests.get(f"{url}/api/sessions/{sid}?per_page=100", timeout=10).json()
        assert all(m["content"] != second_text for m in shown["messages"])
        assert shown["summaries"] == [{**shown["summaries"][0], "content": second_text,
                                       "first_seq": first_from, "last_seq": second_to}]
        export = requests.get(f"{url}/api/sessions/{sid}/export", timeout=10).json()
        assert export["summaries"][0]["last_seq"] == second_to
        markdown = requests.get(f"{url}/api/sessions/{sid}/export?format=markdown", timeout=10)
        assert f"> _summary of messages {first_from}-{second_to}" in markdown.text
        # An import takes the messages, not the summary (the next turn that needs one makes
        # it); deleting the session deletes its summaries.
        copy = requests.post(f"{url}/api/sessions/import", json={**export, "id": None}, timeout=30)
        assert copy.status_code == 201 and summaries(app, copy.json()["id"]) == []
        assert requests.delete(f"{url}/api/sessions/{sid}", timeout=10).status_code == 200
        assert summaries(app, sid) == []


def test_a_failing_summary_falls_back_to_the_note(engine_url, tmp_path, logs_dir):
    """The real engine refuses a model it does not have: the turn goes on with the note."""
    with summarizing_stack(engine_url, tmp_path, logs_dir, "summary-fails",
                           SUMMARY_MODEL="no-such-model:latest",
                           SUMMARY_MAX_TOKENS="40") as (app, url, tap):
        sid = str(uuid.uuid4())
        turns, mark = [], 0
        while not any("summarizing" in t.events for t in turns) and len(turns) < 20:
            mark = len(tap.seen)
            turns.append(Turn(url, sid, f"{len(turns)}. {SAY}"))
            assert turns[-1].reply.status_code == 200, turns[-1].reply.text
        assert "summarizing" in turns[-1].events and "done" in turns[-1].events
        asked, sent = tap.chats(mark)
        assert [a["model"] for a in asked] == ["no-such-model:latest"]
        assert sent[0]["messages"][0]["content"].startswith(NOTE.split(";")[0])
        assert summaries(app, sid) == []
        assert turns[-1].reply.json()["message"]["content"]


def long_session(url):
    """A session whose imported history (30 messages) does not fit num_ctx 512."""
    said = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i}. {SAY}"}
            for i in range(30)]
    made = requests.post(f"{url}/api/sessions/import", json={"threads": {MODEL: said}}, timeout=30)
    assert made.status_code == 201, made.text
    return made.json()["id"]


def chat(url, sid, rid, stream=False):
    return requests.post(f"{url}/api/chat", timeout=120, stream=stream,
                         headers={"X-Request-ID": rid},
                         json={"model": MODEL, "session_id": sid, "stream": stream,
                               "options": OPTIONS, "messages": [{"role": "user", "content": SAY}]})


def test_a_summary_stops_when_its_turn_is_cancelled_or_overdue(engine_url, tmp_path, logs_dir):
    """The summary is part of its asker's turn: a cancel or MAX_REQUEST_SECONDS stops it at
    the next token, the turn ends with nothing stored and nothing sent, and the worker is free
    for the next request at once."""
    with summarizing_stack(engine_url, tmp_path, logs_dir, "summary-stops",
                           SUMMARY_MAX_TOKENS="40") as (app, url, tap):
        sid = long_session(url)
        before, _ = thread(app, sid)
        tap.hold_summaries = True
        rid, replies = str(uuid.uuid4()), []
        asking = threading.Thread(target=lambda: replies.append(chat(url, sid, rid)))
        asking.start()
        procs.wait_until(lambda: tap.chats()[0], 60, None, "the summary request")
        mark = len(tap.seen)
        started = time.monotonic()
        assert requests.delete(f"{url}/api/queue/{rid}", timeout=10).status_code == 200
        asking.join(30)
        assert not asking.is_alive() and time.monotonic() - started < 10
        procs.wait_until(lambda: tap.trickled, 10, None, "the summary's end")
        assert tap.trickled == ["stopped"]  # the worker hung up on it
        assert tap.chats(mark) == ([], [])  # the turn itself was never sent
        assert thread(app, sid)[0] == before and summaries(app, sid) == []
        # MAX_REQUEST_SECONDS ends it too, with its clear error.
        app.config["MAX_REQUEST_SECONDS"] = 2
        started = time.monotonic()
        overdue = chat(url, sid, str(uuid.uuid4()))
        assert overdue.status_code == 503 and "MAX_REQUEST_SECONDS" in overdue.json()["error"]
        assert time.monotonic() - started < 15
        procs.wait_until(lambda: len(tap.trickled) == 2, 10, None, "the second summary's end")
        assert tap.trickled == ["stopped", "stopped"]
        assert thread(app, sid)[0] == before and summaries(app, sid) == []
        # The worker is free: the next turn is summarized and answered.
        tap.hold_summaries, app.config["MAX_REQUEST_SECONDS"] = False, 600
        answered = chat(url, sid, str(uuid.uuid4()))
        assert answered.status_code == 200, answered.text
        assert len(summaries(app, sid)) == 1

"""Context windows: token-exact budgets, truncation with a note, calibration, model threads."""
import uuid

import ollama
import pytest
import requests

from chatbot.flow.context import NOTE, PER_MESSAGE, TooLong, fit, new_messages
from chatbot.flow.window import BAND, MAX_OVERHEAD, RATIOS, learn
from chatbot.tokens import count_tokens
from chatbot.store import chain
from tests.conftest import MODEL
from tests.test_queue import wait_for

GREEDY = {"temperature": 0, "seed": 42}


def msg(seq, role, tokens, content=None):
    return {"seq": seq, "role": role, "content": content or f"m{seq}", "tokens": tokens}


def test_fit_keeps_system_and_newest_and_notes_the_cut():
    stored = [msg(1, "system", 10), msg(2, "user", 10), msg(3, "assistant", 10),
              msg(4, "user", 10), msg(5, "assistant", 10)]
    new = [{"role": "user", "content": "now", "tokens": 10}]
    note = count_tokens({"content": NOTE.format(dropped=2, s="s")}) + PER_MESSAGE
    budget = 4 * (10 + PER_MESSAGE) + note  # system, two newest, the new one, and the note
    context, used, dropped = fit(stored[:1], reversed(stored), new, budget, stored=5)
    assert [m["content"] for m in context] == ["m1", NOTE.format(dropped=2, s="s"), "m4", "m5", "now"]
    assert dropped == 2 and used == budget
    # One token less and the oldest kept message goes too, to make room for the note.
    context, used, dropped = fit(stored[:1], reversed(stored), new, budget - 1, stored=5)
    assert [m["content"] for m in context][2:] == ["m5", "now"] and dropped == 3


def test_fit_sends_everything_when_it_fits():
    stored = [msg(1, "user", 5), msg(2, "assistant", 5)]
    context, _, dropped = fit([], reversed(stored), [], 1000, stored=2)
    assert [m["seq"] for m in context] == [1, 2] and dropped == 0


def test_fit_refuses_new_messages_that_alone_overflow():
    with pytest.raises(TooLong):
        fit([], iter(()), [{"role": "user", "content": "x", "tokens": 500}], 100, stored=0)


def test_new_messages_by_chained_hash():
    thread = [("user", "a"), ("assistant", "b")]
    running = ""
    for role, content in thread:
        running = chain(running, role, content)
    resent = [{"role": r, "content": c} for r, c in thread] + [{"role": "user", "content": "c"}]
    assert new_messages((2, running), resent) == resent[2:]
    edited = [{"role": "user", "content": "A"}] + resent[1:]
    assert new_messages((2, running), edited) == edited  # a different history: all new
    assert new_messages((0, ""), resent) == resent


def chat(stack, sid, messages, options, model=MODEL):
    return ollama.Client(host=stack.url, headers={"X-Session-ID": sid}).chat(
        model, messages=messages, options=options, stream=False)


def session_meta(stack, sid):
    from chatbot.store import ChatSession, db

    with stack.app.app_context():
        return db.session.get(ChatSession, sid).meta


def test_long_conversation_is_truncated_to_num_ctx(stack):
    sid = str(uuid.uuid4())
    small = {**GREEDY, "num_ctx": 256, "num_predict": 8}
    chat(stack, sid, [{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": "Say hi."}], small)
    for i in range(8):
        reply = chat(stack, sid, [{"role": "user", "content": f"Tell me fact number {i} about "
                                   "the ocean, its tides, its currents and its creatures."}], small)
        # chatbot sends truncate: false, so the upstream refuses what does not fit: the
        # prompt was sized to the window by chatbot, not cut by the upstream.
        assert reply.prompt_eval_count < 256
    meta = session_meta(stack, sid)
    assert meta["truncations"] >= 1 and meta["last_truncation"]["dropped"] >= 1
    rows = stack.rows(sid)
    assert len(rows) == 19  # truncation only shapes what is sent: every message is kept
    assert rows[0].role == "system"


def test_request_too_long_for_the_window_is_400_and_stores_nothing(stack):
    sid = str(uuid.uuid4())
    long_text = "word " * 400
    resp = requests.post(stack.url + "/api/chat", json={
        "model": MODEL, "session_id": sid, "stream": False,
        "messages": [{"role": "user", "content": long_text}],
        "options": {**GREEDY, "num_ctx": 128, "num_predict": 8}}, timeout=60)
    assert resp.status_code == 400 and "num_ctx" in resp.json()["error"]
    assert stack.rows(sid) == []


PARAGRAPH = ("The harbour wakes before the town does: gulls argue over the nets, a ferry "
             "coughs its engine awake, and the baker's van rattles down the hill with bread "
             "for the cafes that line the quay. By seven the fishermen are back, their boxes "
             "of mackerel stacked on the slipway while the auction bell rings twice. ")


def test_calibration_converges_on_the_bundled_model(stack):
    calibration = stack.app.extensions["calibration"]
    host = stack.env["OLLAMA_HOST"]
    calibration.redis.hdel(RATIOS, f"{host}|{MODEL}")
    figures = []
    for i in range(8):  # long prompts teach the ratio, short ones the template's overhead
        text = f"{i}. {PARAGRAPH}" if i % 2 else f"Count to {i + 3}, please."
        chat(stack, str(uuid.uuid4()), [{"role": "user", "content": text}],
             {**GREEDY, "num_predict": 2})
        figures.append(calibration.read(host, MODEL))
    # SmolLM2's tokenizer and template are not cl100k: the ratio moves off 1 and settles, and
    # the template's own tokens (its default system prompt) are learned as a fixed overhead.
    (ratio, overhead), (before, _) = figures[-1], figures[-3]
    assert abs(ratio - 1.0) > 0.05 and abs(ratio - before) / ratio < 0.1
    assert overhead > 5


def test_a_short_first_chat_leaves_every_window_as_it_was(stack):
    """"hi" costs a handful of our tokens but about 30 upstream (the template's system prompt):
    it must not become the model's tokens-per-token ratio for everyone."""
    calibration = stack.app.extensions["calibration"]
    host = stack.env["OLLAMA_HOST"]
    calibration.redis.hdel(RATIOS, f"{host}|{MODEL}")
    # A fresh load: the engine's prompt cache would otherwise spare the template's tokens.
    requests.post(host + "/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=60)
    reply = chat(stack, str(uuid.uuid4()), [{"role": "user", "content": "hi"}],
                 {**GREEDY, "num_predict": 2})
    assert reply.prompt_eval_count > 5 * count_tokens({"content": "hi"})
    # Calibration runs just after the client has its reply.
    wait_for(lambda: calibration.read(host, MODEL)[1] > 0, what="the overhead to be learned")
    ratio, overhead = calibration.read(host, MODEL)
    assert ratio == 1.0 and 0 < overhead <= MAX_OVERHEAD
    # Another session's 300-token message still fits a 512-token window.
    text = " ".join(["sea"] * 300)
    assert count_tokens({"content": text}) >= 290
    fits = chat(stack, str(uuid.uuid4()), [{"role": "user", "content": text}],
                {**GREEDY, "num_predict": 2, "num_ctx": 512})
    assert fits.done


def test_calibration_stays_in_its_band_and_recovers():
    figures = (1.2, 20.0)
    # An absurd reading moves the figures a step, within the band, never to the reading.
    bad, cut = learn(figures, sent=100, seen=100_000, window=4096, pure_text=True)
    assert not cut and BAND[0] <= bad[0] < 1.2 + 0.3 * (BAND[1] - 1.2) + 1e-9
    bad, cut = learn(bad, sent=10, seen=100_000, window=4096, pure_text=True)
    assert not cut and bad[1] < 20 + 0.3 * MAX_OVERHEAD
    recovered = bad
    for i in range(40):  # normal readings of a ratio of 1.2 and an overhead of 20
        sent = (20, 400)[i % 2]
        recovered, _ = learn(recovered, sent=sent, seen=20 + 1.2 * sent, window=4096,
                             pure_text=True)
    assert abs(recovered[0] - 1.2) < 0.05 and abs(recovered[1] - 20) < 8
    # Short or non-text prompts teach no ratio; a far smaller reading (a prompt cache) teaches
    # nothing, and is a cut only when the upstream filled most of its window.
    assert learn(figures, sent=10, seen=200, window=4096, pure_text=True)[0][0] == 1.2
    assert learn(figures, sent=500, seen=900, window=4096, pure_text=False)[0][0] == 1.2
    assert learn(figures, sent=3000, seen=100, window=4096, pure_text=True) == (None, False)
    assert learn(figures, sent=3000, seen=2048, window=2048, pure_text=True) == (None, True)


def test_each_model_keeps_its_own_thread(stack):
    client = ollama.Client(host=stack.url)
    other = f"other-{uuid.uuid4().hex[:6]}:latest"
    client.copy(MODEL, other)
    try:
        sid = str(uuid.uuid4())
        question = [{"role": "user", "content": "What is 2+2?"}]
        chat(stack, sid, question, {**GREEDY, "num_predict": 4})
        # (the same question again would be a regenerate: a branch, see test_branches)
        grown = chat(stack, sid, [{"role": "user", "content": "What is 3+3?"}],
                     {**GREEDY, "num_predict": 4})
        switched = chat(stack, sid, question, {**GREEDY, "num_predict": 4}, model=other)
        fresh = chat(stack, str(uuid.uuid4()), question, {**GREEDY, "num_predict": 4})
        assert switched.prompt_eval_count == fresh.prompt_eval_count < grown.prompt_eval_count
        models = [r.model for r in stack.rows(sid)]
        assert models == [MODEL] * 4 + [other] * 2
    finally:
        client.delete(other)

"""The engine's prompt cache (chatbot/engine/prompt_cache.py): a conversation's next turn
reuses its kept state whatever ran in between, answers exactly as a cold run does, never
carries another conversation's tokens, and the states kept stay within ENGINE_CACHE_MB."""
import random

import pytest
import requests

from chatbot.ops import procs
from tests.engine.conftest import GREEDY, MODEL

WORDS = "river stone market winter lantern copper orchard signal harbor meadow".split()
SYSTEM = {"role": "system", "content": "You answer in a few words."}  # shared by every one
BUDGET_MB = 24  # two of these conversations' states, not three (about 23 KB a token)


def notes(seed):
    rng = random.Random(seed)
    return "Notes: " + " ".join(rng.choice(WORDS) for _ in range(400))


def conversation(seed):
    return [SYSTEM, {"role": "user", "content": notes(seed) + "\nWhich word comes first?"}]


def start(tmp_path_factory, cache_mb):
    log = tmp_path_factory.mktemp("prompt-cache") / f"engine-{cache_mb}.log"
    return procs.start_engine(procs.free_port(), log=log, env={"ENGINE_CACHE_MB": str(cache_mb)})


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    proc, url = start(tmp_path_factory, BUDGET_MB)
    yield url
    procs.stop(proc)


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """An engine that keeps no state: each reference answer below is evaluated whole."""
    proc, url = start(tmp_path_factory, 0)
    yield url
    procs.stop(proc)


def chat(url, messages):
    resp = requests.post(url + "/api/chat", timeout=300, json={
        "model": MODEL, "messages": messages, "stream": False,
        "options": {**GREEDY, "num_predict": 12, "num_ctx": 2048}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return body["message"]["content"], body["eval_count"], body["prompt_eval_count"]


def reference(url, messages):
    """The answer from nothing: another prompt first, so not even the live context helps."""
    chat(url, [{"role": "user", "content": "Unrelated."}])
    return chat(url, messages)


def cache(url):
    text = requests.get(url + "/metrics", timeout=10).text
    return {line.split()[0].replace("chatbot_engine_prompt_cache_", ""): float(line.split()[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def reply(url, history, question):
    history.append({"role": "user", "content": question})
    answer = chat(url, history)
    history.append({"role": "assistant", "content": answer[0]})
    return answer


def test_interleaved_turns_reuse_their_own_state_and_answer_as_cold_runs(cached, cold):
    a, b = conversation(1), conversation(2)
    for history in (a, b):
        history.append({"role": "assistant", "content": chat(cached, history)[0]})
    before = cache(cached)
    answer_a = reply(cached, a, "And the last word?")  # B ran in between
    after = cache(cached)
    assert after["loads_total"] == before["loads_total"] + 1
    reused = after["reused_tokens_total"] - before["reused_tokens_total"]
    evaluated = after["evaluated_tokens_total"] - before["evaluated_tokens_total"]
    assert reused > 400 and evaluated < 60, (reused, evaluated)  # only the new turn
    answer_b = reply(cached, b, "And the last word?")
    assert cache(cached)["loads_total"] == before["loads_total"] + 2
    assert answer_a == reference(cold, a[:-1])
    assert answer_b == reference(cold, b[:-1])


def test_no_conversation_gets_another_ones_tokens(cached, cold):
    """Every conversation starts like the others (the same system prompt) and then differs:
    a kept state is used only as far as it matches, turn after turn, interleaved."""
    histories = [conversation(seed) for seed in (11, 12, 13)]
    for question in ("Which word comes first?", "And the last?"):
        for history in histories:
            if history[-1]["role"] == "assistant":
                history.append({"role": "user", "content": question})
            answer = chat(cached, history)
            assert answer == reference(cold, history), question
            history.append({"role": "assistant", "content": answer[0]})


def test_the_states_kept_stay_within_the_budget_least_recently_used_out(cached):
    # Each starts with its own word: no state is a better start for another than the last run.
    histories = [[{"role": "system", "content": f"{WORDS[i]} {notes(i)}"},
                  {"role": "user", "content": "Which word comes first?"}] for i in range(3)]
    for history in histories:  # three states of about 11 MB: one must go
        history.append({"role": "assistant", "content": chat(cached, history)[0]})
        figures = cache(cached)
        assert figures["bytes"] <= figures["budget_bytes"] == BUDGET_MB * 2 ** 20
    assert figures["states"] == 2
    reused = figures["reused_tokens_total"]
    reply(cached, histories[0], "And the last word?")  # its state went first: evaluated anew
    figures = cache(cached)
    assert figures["reused_tokens_total"] - reused < 50  # the shared start, no more
    reused = figures["reused_tokens_total"]
    reply(cached, histories[2], "And the last word?")  # still kept: only the new turn
    assert cache(cached)["reused_tokens_total"] - reused > 400


def test_a_bad_budget_stops_the_engine(tmp_path):
    proc = procs.spawn(procs.engine_argv(procs.free_port()), env={"ENGINE_CACHE_MB": "lots"},
                       log=tmp_path / "engine.log")
    assert proc.wait(60) != 0
    assert "ENGINE_CACHE_MB must be a number of megabytes" in (tmp_path / "engine.log").read_text()

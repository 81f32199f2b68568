"""Ollama's 2025-26 API on the engine (issue #22): logprobs, truncate and shift, think values,
/api/status, tags' capabilities and lengths, embed dimensions, the default repeat_penalty.
Behaviours and texts come from Ollama v0.33's source (api/types.go, server/routes.go,
server/prompt.go, server/logprob.go, llm/llama_server.go)."""
import json
import math

import pytest
import requests

from chatbot.engine.generation import DEFAULTS, PROMPT_TOO_LONG, sampling

from .conftest import EMBED_MODEL, GREEDY, MODEL

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
LONG = [{"role": "user", "content": "word " * 300}]  # ~300 tokens
COUNTING = "1, 2, 3, 4, 5,"  # SmolLM2 keeps counting: no EOS to end a test early


def post(engine, path, body, status=200):
    r = requests.post(engine + path, json=body, timeout=300)
    assert r.status_code == status, r.text
    return r.json()


def lines(engine, path, body):
    r = requests.post(engine + path, json={**body, "stream": True}, timeout=300)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


# -- logprobs -------------------------------------------------------------------------

def log_softmax(row):
    peak = max(row)
    total = peak + math.log(sum(math.exp(x - peak) for x in row))
    return [x - total for x in row]


@pytest.fixture(scope="module")
def first_token_logprobs(model_path, tokenizer):
    """The first reply token's distribution, from a Llama of our own with every logit kept."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), n_ctx=256, logits_all=True, verbose=False)
    tokens = llm.tokenize(tokenizer.render(QUESTION).encode(), add_bos=True, special=True)
    llm.eval(tokens)
    row = log_softmax(llm.scores[len(tokens) - 1].tolist())
    llm.close()
    return row


def test_chat_logprobs_follow_ollamas_shape_and_values(engine, first_token_logprobs, tokenizer):
    r = post(engine, "/api/chat", {"model": MODEL, "messages": QUESTION, "stream": False,
                                   "logprobs": True, "top_logprobs": 3,
                                   "options": {**GREEDY, "num_predict": 6}})
    entries = r["logprobs"]
    assert len(entries) == r["eval_count"] == 6
    assert "".join(e["token"] for e in entries) == r["message"]["content"]
    for e in entries:
        assert set(e) == {"token", "logprob", "bytes", "top_logprobs"}
        assert e["bytes"] == list(e["token"].encode()) and e["logprob"] <= 0
        top = e["top_logprobs"]
        assert len(top) == 3 and [t["logprob"] for t in top] == \
            sorted((t["logprob"] for t in top), reverse=True)
        assert top[0]["token"] == e["token"] and top[0]["logprob"] == e["logprob"]  # greedy
        assert all(t["bytes"] == list(t["token"].encode()) for t in top)
    # The raw distribution's log-softmax, temperature not applied (llama-server's n_probs).
    row = first_token_logprobs
    best = sorted(range(len(row)), key=lambda t: -row[t])[:3]
    assert [t["token"] for t in entries[0]["top_logprobs"]] == [tokenizer.text(t) for t in best]
    assert [t["logprob"] for t in entries[0]["top_logprobs"]] == \
        pytest.approx([row[t] for t in best], abs=2e-3)


def test_streamed_chunks_carry_the_logprobs_of_their_own_tokens(engine):
    body = {"model": MODEL, "prompt": "What is 2+2?", "logprobs": True,
            "options": {**GREEDY, "num_predict": 5}}
    chunks = lines(engine, "/api/generate", body)
    *pieces, final = chunks
    assert final["done"] and "logprobs" not in final
    assert all("".join(e["token"] for e in c["logprobs"]) == c["response"] for c in pieces)
    assert sum(len(c["logprobs"]) for c in pieces) == final["eval_count"] == 5
    assert all("top_logprobs" not in e for c in pieces for e in c["logprobs"])  # 0: none
    whole = post(engine, "/api/generate", {**body, "stream": False})
    assert whole["logprobs"] == [e for c in pieces for e in c["logprobs"]]
    chat = lines(engine, "/api/chat", {"model": MODEL, "messages": QUESTION, "logprobs": True,
                                       "top_logprobs": 1, "options": {**GREEDY,
                                                                      "num_predict": 3}})
    assert all(len(e["top_logprobs"]) == 1 for c in chat[:-1] for e in c["logprobs"])


def test_no_logprobs_unless_asked(engine):
    body = {"model": MODEL, "messages": QUESTION, "stream": False, "top_logprobs": 5,
            "options": {**GREEDY, "num_predict": 3}}
    assert "logprobs" not in post(engine, "/api/chat", body)
    assert all("logprobs" not in c for c in lines(engine, "/api/chat", body))


@pytest.mark.parametrize("top", [21, -1])
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_top_logprobs_outside_0_to_20_is_400_before_the_model_is_looked_up(engine, path, top):
    body = {"model": "no-such-model", "messages": QUESTION, "prompt": "hi", "logprobs": True,
            "top_logprobs": top}
    assert post(engine, path, body, 400) == {"error": "top_logprobs must be between 0 and 20"}


@pytest.mark.parametrize("value, kind", [("3", "string"), (2.5, "number 2.5"),
                                         (True, "bool")])
def test_top_logprobs_is_a_go_int(engine, value, kind):
    body = {"model": MODEL, "messages": QUESTION, "top_logprobs": value}
    assert post(engine, "/api/chat", body, 400) == {
        "error": f"json: cannot unmarshal {kind} into Go struct field ChatRequest.top_logprobs "
                 "of type int"}


# -- truncate and shift -----------------------------------------------------------------

def test_truncate_false_is_llama_servers_refusal(engine, tokenizer):
    for path, extra in (("/api/chat", {"messages": LONG}),
                        ("/api/generate", {"prompt": LONG[0]["content"]})):
        body = {"model": MODEL, "stream": False, "truncate": False,
                "options": {**GREEDY, "num_ctx": 128}, **extra}
        error = json.loads(post(engine, path, body, 400)["error"])["error"]
        n = error["n_prompt_tokens"]
        assert n > 128 and error == {
            "code": 400, "type": "exceed_context_size_error", "n_ctx": 128,
            "n_prompt_tokens": n, "message": f"request ({n} tokens) exceeds the available "
                                             "context size (128 tokens), try increasing it"}


def test_shift_false_refuses_a_prompt_that_fills_the_context(engine):
    body = {"model": MODEL, "messages": LONG, "stream": False, "shift": False,
            "options": {**GREEDY, "num_ctx": 128}}
    assert post(engine, "/api/chat", body, 400) == {"error": PROMPT_TOO_LONG}
    r = requests.post(engine + "/api/chat", json={**body, "stream": True})  # before any byte
    assert (r.status_code, r.json()) == (400, {"error": PROMPT_TOO_LONG})


def test_chat_leaves_out_old_messages_keeping_the_system_ones(engine, tokenizer):
    """server/prompt.go: whole messages go, oldest first, until the prompt fits num_ctx."""
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "tell me " * 40},
                {"role": "assistant", "content": "no " * 40},
                {"role": "user", "content": "What is 2+2?"}]
    assert tokenizer.count(tokenizer.render(messages)) > 128 >= \
        tokenizer.count(tokenizer.render([messages[0]] + messages[2:]))  # only one goes
    kept = [messages[0]] + messages[2:]
    body = {"model": MODEL, "messages": messages, "stream": False,
            "options": {**GREEDY, "num_ctx": 128, "num_predict": 2}}
    r = post(engine, "/api/chat", body)
    assert r["prompt_eval_count"] == tokenizer.count(tokenizer.render(kept))
    # truncate false keeps them all, and the prompt does not fit.
    assert "exceeds the available context size" in \
        post(engine, "/api/chat", {**body, "truncate": False}, 400)["error"]


def test_shift_false_ends_with_length_when_the_context_is_full(engine):
    body = {"model": MODEL, "prompt": COUNTING, "raw": True, "stream": False, "shift": False,
            "options": {**GREEDY, "num_ctx": 64, "num_predict": 100}}
    r = post(engine, "/api/generate", body)
    assert r["done_reason"] == "length" and r["prompt_eval_count"] + r["eval_count"] == 64


def test_context_shift_lets_generation_run_past_the_context(engine):
    body = {"model": MODEL, "prompt": COUNTING, "raw": True, "stream": False,
            "options": {**GREEDY, "num_ctx": 64, "num_predict": 64}}
    r = post(engine, "/api/generate", body)
    assert (r["done_reason"], r["eval_count"]) == ("length", 64)
    assert r["prompt_eval_count"] < 64 < r["prompt_eval_count"] + r["eval_count"]


@pytest.mark.parametrize("key", ["truncate", "shift", "logprobs"])
def test_flags_are_go_bools(engine, key):
    body = {"model": MODEL, "prompt": "hi", key: "yes"}
    assert post(engine, "/api/generate", body, 400) == {
        "error": f"json: cannot unmarshal string into Go struct field GenerateRequest.{key} "
                 "of type bool"}


# -- think ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, error", [
    ("extreme", 'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, '
                'or false)'),
    (3, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
    ("max", f'"{MODEL}" does not support thinking'),
    (True, f'"{MODEL}" does not support thinking'),
])
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_think_values_are_checked_as_ollama_does(engine, path, value, error):
    body = {"model": MODEL, "messages": QUESTION, "prompt": "hi", "think": value}
    assert post(engine, path, body, 400) == {"error": error}


def test_a_bad_think_value_fails_before_the_model_is_looked_up(engine):
    body = {"model": "no-such-model", "messages": QUESTION, "think": "extreme"}
    assert post(engine, "/api/chat", body, 400)["error"].startswith("invalid think value")


def test_unloading_comes_before_the_think_and_capability_checks(engine):
    for model in (MODEL, EMBED_MODEL):
        r = post(engine, "/api/chat", {"model": model, "think": True, "keep_alive": 0,
                                       "stream": False})
        assert (r["done"], r["done_reason"]) == (True, "unload")
    assert post(engine, "/api/chat", {"model": MODEL, "think": False, "stream": False,
                                      "messages": QUESTION, "options": {
                                          **GREEDY, "num_predict": 1}})["done"]


# -- status, tags, show, ps ------------------------------------------------------------------

def test_status_says_cloud_is_disabled(engine):
    r = requests.get(engine + "/api/status")
    assert (r.status_code, r.json()) == (200, {"cloud": {"disabled": True, "source": "env"}})


def test_tags_carry_capabilities_and_lengths(engine):
    models = {m["name"]: m for m in requests.get(engine + "/api/tags").json()["models"]}
    smol, minilm = models[MODEL], models[EMBED_MODEL]
    assert smol["capabilities"] == ["completion", "tools"] and minilm["capabilities"] == ["embedding"]
    assert (smol["details"]["context_length"], smol["details"]["embedding_length"]) == \
        (8192, 576)
    assert (minilm["details"]["context_length"], minilm["details"]["embedding_length"]) == \
        (512, 384)
    assert all("capabilities" in m and "remote_host" not in m and "remote_model" not in m
               for m in models.values())


def test_show_and_ps_keep_their_shapes(engine):
    show = post(engine, "/api/show", {"model": MODEL})
    assert show["capabilities"] == ["completion", "tools"] and isinstance(show["model_info"], dict)
    assert "context_length" not in show["details"] and "remote_host" not in show
    post(engine, "/api/generate", {"model": MODEL, "prompt": "hi", "stream": False,
                                   "options": {**GREEDY, "num_predict": 1}})
    post(engine, "/api/embed", {"model": EMBED_MODEL, "input": "hi", "keep_alive": "1h"})
    running = requests.get(engine + "/api/ps").json()["models"]
    # Longest time left first, as Ollama sorts: the chat model is kept forever here.
    assert [m["name"] for m in running][:2] == [MODEL, EMBED_MODEL]
    assert all(
        set(m) == {"name", "model", "size", "digest", "details", "expires_at", "size_vram",
                   "context_length"} for m in running)


# -- embed dimensions ---------------------------------------------------------------------

def norm(vector):
    return math.sqrt(sum(x * x for x in vector))


def test_dimensions_cut_and_renormalize(engine):
    body = {"model": EMBED_MODEL, "input": ["The cat sat on the mat.", "Hello"]}
    full = post(engine, "/api/embed", body)["embeddings"]
    cut = post(engine, "/api/embed", {**body, "dimensions": 8})["embeddings"]
    assert [len(v) for v in cut] == [8, 8]
    for short, long in zip(cut, full):
        assert norm(short) == pytest.approx(1.0, abs=1e-6)
        assert short == pytest.approx([x / norm(long[:8]) for x in long[:8]], abs=1e-6)


@pytest.mark.parametrize("dimensions", [0, -3, 384, 10_000])
def test_other_dimensions_change_nothing(engine, dimensions):
    """Ollama cuts only when 0 < dimensions < the model's: no error otherwise."""
    body = {"model": EMBED_MODEL, "input": "The cat sat on the mat."}
    full = post(engine, "/api/embed", body)["embeddings"]
    vector = post(engine, "/api/embed", {**body, "dimensions": dimensions})["embeddings"][0]
    assert vector == pytest.approx(full[0], abs=1e-6)


def test_dimensions_is_a_go_int(engine):
    body = {"model": EMBED_MODEL, "input": "hi", "dimensions": "8"}
    assert post(engine, "/api/embed", body, 400) == {
        "error": "json: cannot unmarshal string into Go struct field EmbedRequest.dimensions "
                 "of type int"}


# -- default options --------------------------------------------------------------------------

def test_defaults_are_ollamas_default_options():
    assert DEFAULTS["repeat_penalty"] == 1.0 and DEFAULTS["num_keep"] == 4
    assert not {"mirostat", "mirostat_tau", "mirostat_eta", "tfs_z",
                "penalize_newline"} & set(DEFAULTS)
    kwargs = sampling({}).kwargs
    assert kwargs["repeat_penalty"] == 1.0 and "mirostat_mode" not in kwargs


def test_no_repeat_penalty_unless_asked(client):
    plain = client.chat(model=MODEL, messages=QUESTION, options={**GREEDY, "num_predict": 24})
    same = client.chat(model=MODEL, messages=QUESTION, options={**GREEDY, "num_predict": 24,
                                                                "repeat_penalty": 1.0})
    assert plain.message.content == same.message.content

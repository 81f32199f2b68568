"""Real generation through the official client: content, determinism, counts, streaming."""
import json
import re
import threading
import time

import requests

from .conftest import FOLDER_MODEL, GREEDY, MODEL

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z")
FINAL_FIELDS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                "eval_count", "eval_duration")


def test_chat_answers_two_plus_two(client, tokenizer):
    r = client.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    assert "4" in r.message.content and r.message.role == "assistant"
    assert r.done and r.done_reason == "stop"
    assert r.prompt_eval_count == tokenizer.count(tokenizer.render(QUESTION))
    assert 0 < r.eval_count < 64
    assert all(isinstance(getattr(r, f), int) and getattr(r, f) >= 0 for f in FINAL_FIELDS)
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration


def test_same_request_same_reply(client):
    first = client.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    second = client.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    assert first.message.content == second.message.content
    assert first.prompt_eval_count == second.prompt_eval_count  # KV prefix reuse not visible


def test_seeded_sampling_is_repeatable(client):
    options = {"temperature": 0.9, "seed": 7, "num_predict": 16}
    replies = {client.chat(model=MODEL, messages=QUESTION, options=options).message.content
               for _ in range(2)}
    assert len(replies) == 1


def test_num_predict_stops_with_length(client):
    r = client.chat(model=MODEL, messages=QUESTION, options={**GREEDY, "num_predict": 5})
    assert r.done_reason == "length" and r.eval_count == 5 and r.message.content


def test_stream_is_the_same_reply_in_chunks(client, engine):
    whole = client.chat(model=MODEL, messages=QUESTION, options=GREEDY).message.content
    chunks = list(client.chat(model=MODEL, messages=QUESTION, options=GREEDY, stream=True))
    assert "".join(c.message.content for c in chunks) == whole
    assert len(chunks) > 3 and not any(c.done for c in chunks[:-1])
    final = chunks[-1]
    assert final.done and final.done_reason == "stop" and final.message.content == ""
    assert final.eval_count == len(chunks) - 1  # one chunk per generated token here
    # Raw wire format: NDJSON, default stream=true, RFC 3339 UTC timestamps.
    r = requests.post(engine + "/api/chat", json={"model": MODEL, "messages": QUESTION,
                                                   "options": {**GREEDY, "num_predict": 3}})
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) == 4 and all(RFC3339.fullmatch(c["created_at"]) for c in lines)
    assert set(FINAL_FIELDS) <= set(lines[-1])


def test_prompt_eval_count_is_the_rendered_prompt_length(client, tokenizer):
    messages = [{"role": "system", "content": "You answer with one number."},
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+3? Ünïcödé 🚀"}]
    r = client.chat(model=MODEL, messages=messages, options={**GREEDY, "num_predict": 2})
    assert r.prompt_eval_count == tokenizer.count(tokenizer.render(messages))
    g = client.generate(model=MODEL, prompt="What is 2+2?", system="Be brief.",
                        options={**GREEDY, "num_predict": 2})
    expected = tokenizer.render([{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "What is 2+2?"}])
    assert g.prompt_eval_count == tokenizer.count(expected)


def test_generate_templates_the_prompt_and_returns_context(client, tokenizer):
    r = client.generate(model=MODEL, prompt="What is 2+2?", options=GREEDY)
    assert "4" in r.response and r.done_reason == "stop"
    prompt_tokens = r.prompt_eval_count
    assert len(r.context) == prompt_tokens + r.eval_count
    chunks = list(client.generate(model=MODEL, prompt="What is 2+2?", options=GREEDY,
                                  stream=True))
    assert "".join(c.response for c in chunks) == r.response
    follow_up = client.generate(model=MODEL, prompt="And 3+3?", context=r.context,
                                options={**GREEDY, "num_predict": 2})
    assert follow_up.prompt_eval_count > len(r.context)  # the earlier exchange came first


def test_generate_raw_uses_the_prompt_as_is(client, tokenizer):
    prompt = "The capital of France is"
    r = client.generate(model=MODEL, prompt=prompt, raw=True, options={**GREEDY,
                                                                        "num_predict": 4})
    assert r.prompt_eval_count == tokenizer.count(prompt) and r.eval_count == 4


def test_prompt_longer_than_num_ctx_is_truncated(client):
    # llama.cpp pads a context of 128 to 256 internally; the engine must still honour 128.
    long = [{"role": "user", "content": "word " * 300}]
    r = client.chat(model=MODEL, messages=long, options={**GREEDY, "num_ctx": 128,
                                                         "num_predict": 4})
    # Ollama's cut: num_keep (4) tokens and the tail, half the rest left for the reply.
    assert r.prompt_eval_count == 128 - (128 - 4) // 2
    assert r.done_reason in ("length", "stop") and r.eval_count <= 4
    client.generate(model=MODEL, prompt="Hi", options={**GREEDY, "num_predict": 1})  # reload


def test_stop_sequences_cut_the_reply(client):
    full = client.chat(model=MODEL, messages=QUESTION, options=GREEDY).message.content
    word = full.split()[3]
    r = client.chat(model=MODEL, messages=QUESTION, options={**GREEDY, "stop": [word]})
    assert r.done_reason == "stop" and r.message.content == full[:full.index(word)]


def test_format_schema_gives_json(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"]}
    r = client.chat(model=MODEL, messages=[{"role": "user", "content": "Describe a cat."}],
                    format=schema, options={**GREEDY, "num_predict": 40})
    assert set(json.loads(r.message.content)) == {"name", "age"}


def test_folder_model_answers_with_or_without_latest(client):
    for name in (FOLDER_MODEL, FOLDER_MODEL + ":latest"):
        r = client.generate(model=name, prompt="Hi", options={**GREEDY, "num_predict": 2})
        assert r.model == name and r.eval_count == 2
    client.generate(model=FOLDER_MODEL, keep_alive=0)


def test_concurrent_requests_wait_for_each_other(client):
    results = []

    def ask():
        results.append(client.chat(model=MODEL, messages=QUESTION,
                                   options={**GREEDY, "num_predict": 5}))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.eval_count for r in results] == [5, 5, 5]
    assert len({r.message.content for r in results}) == 1


def test_disconnect_stops_generation_and_frees_the_engine(engine, client):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a very long story."}],
            "options": {"temperature": 0.8, "seed": 1, "num_predict": 4000}}
    r = requests.post(engine + "/api/chat", json=body, stream=True, timeout=30)
    lines = r.iter_lines()
    assert not json.loads(next(lines))["done"] and not json.loads(next(lines))["done"]
    r.close()
    started = time.monotonic()
    after = client.generate(model=MODEL, prompt="Hi", options={**GREEDY, "num_predict": 3})
    assert after.eval_count == 3
    # 4000 tokens take a minute or more; the bound is loose for machines busy elsewhere.
    assert time.monotonic() - started < 10

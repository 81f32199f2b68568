"""Options as the engine takes them: wrong types are a 400 in Ollama's words, and num_ctx,
num_thread, num_batch and num_predict are lowered to ceilings. A second engine started with
low ENGINE_MAX_* settings shows, through /api/ps, its log and the counts of a real
generation, that llama.cpp got the lowered values. Plus the pure parts, without a process."""
import json

import pytest
import requests

from chatbot.ops import procs
from chatbot.engine.limits import Limits, check_options
from chatbot.engine.ollama_format import ApiError

from .conftest import GREEDY, MODEL

CEILINGS = {"ENGINE_MAX_CTX": "512", "ENGINE_MAX_THREADS": "1", "ENGINE_MAX_PREDICT": "8",
            "ENGINE_MAX_BATCH": "64"}
STORY = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]
HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def capped(tmp_path_factory, cache_dir):
    log = tmp_path_factory.mktemp("capped-engine") / "engine.log"
    env = {**CEILINGS, "XDG_CACHE_HOME": str(cache_dir), "CHATBOT_ENGINE_MODELS": ""}
    proc, url = procs.start_engine(procs.free_port(), log=log, env=env)
    yield url, log
    procs.stop(proc)
    assert proc.returncode == 0, f"capped engine exited with {proc.returncode}: see {log}"


def chat(url, options, messages=STORY):
    r = requests.post(url + "/api/chat", json={"model": MODEL, "messages": messages,
                                               "stream": False, "options": options})
    assert r.status_code == 200, r.text
    return r.json()


def test_num_ctx_thread_batch_far_above_the_ceilings_are_lowered(capped):
    url, log = capped
    reply = chat(url, {**GREEDY, "num_ctx": 1_000_000, "num_thread": 64, "num_batch": 100_000,
                       "num_predict": 2})
    assert reply["done"] and reply["eval_count"] == 2
    running = requests.get(url + "/api/ps").json()["models"]
    assert [(m["name"], m["context_length"]) for m in running] == [(MODEL, 512)]
    text = log.read_text()
    # Read back from the loaded Llama: llama.cpp's n_ctx and the context parameters it got.
    assert "loaded smollm2:135m: n_ctx=512 n_batch=64 n_threads=1" in text
    assert "option num_ctx=1000000 lowered to the engine's ceiling 512" in text
    assert "option num_thread=64 lowered to the engine's ceiling 1" in text


def test_a_prompt_longer_than_the_ceiling_is_cut_to_it(capped):
    url, _ = capped
    long = [{"role": "user", "content": "apple banana cherry " * 400}]  # ~1,200 tokens
    reply = chat(url, {**GREEDY, "num_ctx": 100_000}, long)
    assert reply["done_reason"] == "length"
    # num_keep (4) tokens and the tail, half the rest freed for the reply, as Ollama cuts
    assert reply["prompt_eval_count"] == 512 - (512 - 4) // 2
    assert reply["prompt_eval_count"] + reply["eval_count"] <= 512


@pytest.mark.parametrize("num_predict, expected", [(1000, 8), (10**12, 8), (-1, 8), (-2, 8),
                                                   (None, 8), (3, 3)])
def test_num_predict_is_lowered_to_its_ceiling(capped, num_predict, expected):
    url, _ = capped
    reply = chat(url, {**GREEDY, "num_predict": num_predict})
    assert (reply["eval_count"], reply["done_reason"]) == (expected, "length")


def test_bad_types_are_still_400_on_a_capped_engine(capped):
    url, _ = capped
    r = requests.post(url + "/api/chat", json={"model": MODEL, "messages": STORY,
                                               "options": {"num_ctx": "1000000"}})
    assert (r.status_code, r.json()) == (400, {"error": 'option "num_ctx" must be of type '
                                                        'integer'})


def test_default_ceiling_is_the_trained_context(client, engine):
    r = client.chat(model=MODEL, messages=STORY, options={**GREEDY, "num_ctx": 10**9,
                                                          "num_predict": 2})
    assert r.done and r.eval_count == 2
    running = {m["name"]: m for m in requests.get(engine + "/api/ps").json()["models"]}
    assert running[MODEL]["context_length"] == 8192  # SmolLM2's trained context


@pytest.mark.parametrize("options, message", [
    ({"num_ctx": "4096"}, 'option "num_ctx" must be of type integer'),
    ({"num_ctx": True}, 'option "num_ctx" must be of type integer'),
    ({"num_ctx": -1}, 'option "num_ctx" must not be negative'),
    ({"num_thread": "all"}, 'option "num_thread" must be of type integer'),
    ({"num_thread": -4}, 'option "num_thread" must not be negative'),
    ({"num_batch": [512]}, 'option "num_batch" must be of type integer'),
    ({"num_batch": -512}, 'option "num_batch" must not be negative'),
    ({"num_predict": "10"}, 'option "num_predict" must be of type integer'),
    ({"num_predict": -3}, 'option "num_predict" must be -1 (no limit), -2 (fill the context)'),
    ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
    ({"top_p": False}, 'option "top_p" must be of type float32'),
    ({"repeat_last_n": -2}, 'option "repeat_last_n" must be -1 (the whole context)'),
    ({"stop": 7}, 'option "stop" must be of type array'),
    ({"stop": ["a", 1]}, 'option "stop" must be of an array of strings'),
    ({"use_mmap": "no"}, 'option "use_mmap" must be of type boolean'),
])
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed"])
def test_bad_option_types_are_400(engine, path, options, message):
    body = {"model": MODEL, "options": options, "messages": HI, "prompt": "hi", "input": "hi"}
    r = requests.post(engine + path, json=body)
    assert r.status_code == 400 and r.json()["error"].startswith(message), r.text


@pytest.mark.parametrize("options", ["fast", [1], 3])
def test_options_that_are_not_an_object_are_400(engine, options):
    r = requests.post(engine + "/api/chat", json={"model": MODEL, "messages": HI,
                                                  "options": options})
    assert r.status_code == 400
    assert r.json()["error"].startswith("json: cannot unmarshal ") and \
        "ChatRequest.options of type map[string]interface {}" in r.json()["error"]


def test_whole_floats_and_nulls_are_accepted(client):
    """JSON has one number type: 4.0 is 4. A null option means "not set", as in Ollama."""
    r = client.chat(model=MODEL, messages=HI, options={"temperature": 0, "num_predict": 4.0,
                                                       "num_ctx": None, "top_k": None})
    assert r.done_reason == "length" and r.eval_count == 4


def test_streamed_error_lines_are_json(engine):
    """A bad request made with stream=true still gets its 400 before the first byte."""
    r = requests.post(engine + "/api/chat", stream=True,
                      json={"model": MODEL, "messages": HI, "options": {"num_ctx": "x"}})
    assert r.status_code == 400
    assert json.loads(r.content) == {"error": 'option "num_ctx" must be of type integer'}


# -- without a process ----------------------------------------------------------------

def test_limits_arithmetic():
    limits = Limits(max_ctx=4096, max_threads=4, max_predict=100, max_batch=256)
    assert limits.ctx(None, trained=8192, default_cap=8192) == 4096
    assert limits.ctx(2048, trained=8192, default_cap=8192) == 2048
    assert limits.ctx(10**9, trained=2048, default_cap=8192) == 2048  # trained stays a cap
    assert limits.ctx(1, trained=8192, default_cap=8192) == 4  # Ollama's floor
    assert (limits.threads(None, 2), limits.threads(64, 2)) == (2, 4)
    assert (limits.batch(None, 8192), limits.batch(10**6, 8192), limits.batch(512, 128)) == \
        (256, 256, 128)
    assert [limits.predict(n) for n in (-2, -1, 0, 50, 10**9)] == [100, 100, 100, 50, 100]
    unlimited = Limits(max_ctx=None, max_threads=4, max_predict=None)
    assert unlimited.ctx(None, trained=131072, default_cap=8192) == 8192
    assert unlimited.ctx(10**9, trained=131072, default_cap=8192) == 131072
    assert [unlimited.predict(n) for n in (-1, 10**9)] == [-1, 10**9]


def test_limits_from_the_environment():
    limits = Limits.from_env({"ENGINE_MAX_CTX": " 1024 ", "ENGINE_MAX_PREDICT": "7"})
    assert (limits.max_ctx, limits.max_predict, limits.max_batch) == (1024, 7, 512)
    assert limits.max_threads >= 1
    for bad in ("0", "-3", "many", "1.5"):
        with pytest.raises(ValueError, match="ENGINE_MAX_BATCH must be a positive integer"):
            Limits.from_env({"ENGINE_MAX_BATCH": bad})


def test_check_options_normalises_what_it_accepts():
    checked = check_options({"num_ctx": 2048.9, "seed": 2**32 + 5, "top_k": 10**20,
                             "stop": ["END"], "temperature": 1, "unknown": object(),
                             "mirostat": "removed from Ollama", "num_thread": None})
    assert checked == {"num_ctx": 2048, "seed": 5, "top_k": 2**31 - 1, "stop": ["END"],
                       "temperature": 1.0}
    assert isinstance(checked["num_ctx"], int)
    with pytest.raises(ApiError) as exc:
        check_options({"num_ctx": float("nan")})
    assert (exc.value.status, exc.value.message) == (400, 'option "num_ctx" must be of type '
                                                          'integer')

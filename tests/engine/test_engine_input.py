"""Hostile input against the real engine: every request gets a 400 or a normal answer,
never a 500, a traceback or a dead engine (llama.cpp aborts the whole process on some
inputs, so the engine has to check them before they reach it)."""
import pytest
import requests

from .conftest import GREEDY, MODEL

HI = [{"role": "user", "content": "Say hi."}]
N_VOCAB = 49152  # SmolLM2's vocabulary


def post(engine, path, body):
    return requests.post(engine + path, json=body, timeout=120)


def assert_alive(client):
    """The engine still generates: the request before it did not kill or wedge it."""
    r = client.chat(model=MODEL, messages=HI, options={**GREEDY, "num_predict": 3})
    assert r.done and r.eval_count == 3


@pytest.mark.parametrize("context, message", [
    ([99999999], "invalid context: token 99999999 is not in the model's vocabulary "
                 f"(0 to {N_VOCAB - 1})"),
    ([1, 2, -1], "invalid context: token -1 is not in the model's vocabulary"),
    ([N_VOCAB], f"invalid context: token {N_VOCAB} is not in the model's vocabulary"),
    ([2**64], "invalid context: token 18446744073709551616 is not in the model's"),
    (["1"], "json: cannot unmarshal string into Go struct field GenerateRequest.context of "
            "type int"),
    ([1.5], "json: cannot unmarshal number 1.5 into Go struct field GenerateRequest.context"),
    ([True], "json: cannot unmarshal bool into Go struct field GenerateRequest.context"),
    ([None], "json: cannot unmarshal null into Go struct field GenerateRequest.context"),
    ("1 2 3", "json: cannot unmarshal string into Go struct field GenerateRequest.context of "
              "type []int"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_context_is_400_and_the_engine_stays_up(engine, client, context, message, stream):
    r = post(engine, "/api/generate", {"model": MODEL, "prompt": "hi", "context": context,
                                       "stream": stream})
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/json"
    assert r.json()["error"].startswith(message)
    assert_alive(client)


def test_context_at_the_vocabulary_edge_is_used(client):
    plain = client.generate(model=MODEL, prompt="Hi", options={**GREEDY, "num_predict": 2})
    edge = client.generate(model=MODEL, prompt="Hi", context=[N_VOCAB - 1, 0],
                           options={**GREEDY, "num_predict": 2})
    assert edge.done and edge.prompt_eval_count > plain.prompt_eval_count


RAW_BODIES = [  # text that json.dumps would not write
    ('{"model": "%s", "messages": %s}' % (MODEL, "[" * 50000 + "]" * 50000),
     "exceeded max depth"),
    ('{"model": "%s", "format": %s}' % (MODEL, '{"a":' * 500 + "1" + "}" * 500),
     "exceeded max depth"),
    ('{"model": "%s", "messages": [], "options": {"num_ctx": NaN}}' % MODEL,
     "invalid character 'N' looking for beginning of value"),
    ('{"model": "%s", "messages": [], "options": {"temperature": -Infinity}}' % MODEL,
     "invalid character '-' looking for beginning of value"),
    ('{"model": "%s", "messages": [], "options": {"temperature": 1e999}}' % MODEL,
     "json: cannot unmarshal number 1e999 into Go value of type float64"),
    ('{"model": "%s", "messages": [], "options": {"num_ctx": %s}}' % (MODEL, "9" * 5000),
     "json: cannot unmarshal number: too many digits"),
]


@pytest.mark.parametrize("raw, message", RAW_BODIES)
def test_malformed_json_is_400(engine, client, raw, message):
    r = requests.post(engine + "/api/chat", data=raw,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith(message)
    assert_alive(client)


def test_lone_surrogates_become_replacement_characters(engine, tokenizer):
    """JSON may escape half a UTF-16 pair ("\\ud800"), which UTF-8 cannot encode; Go's decoder
    reads it as U+FFFD, so the prompt is the one with U+FFFD in its place."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi \ud800 there\udfff"}],
            "stream": False, "options": {**GREEDY, "num_predict": 2, "stop": ["\udc00"]}}
    r = post(engine, "/api/chat", body)
    assert r.status_code == 200, r.text
    replaced = [{"role": "user", "content": "Hi \ufffd there\ufffd"}]
    assert r.json()["prompt_eval_count"] == tokenizer.count(tokenizer.render(replaced))
    r = post(engine, "/api/generate", {"model": MODEL, "prompt": "\udbff", "stream": False,
                                       "options": {"num_predict": 1}})
    assert r.status_code == 200 and r.json()["done"]
    r = post(engine, "/api/embed", {"model": MODEL, "input": ["a\ud800"]})
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1


@pytest.mark.parametrize("option", [{"typical_p": -1}, {"top_p": 1.5}, {"min_p": -0.1}])
def test_probabilities_outside_0_to_1_are_400_and_the_engine_lives(engine, option):
    """A negative typical_p with a grammar aborted llama.cpp (found by the fuzzer)."""
    r = post(engine, "/api/chat", {"model": MODEL, "stream": False, "format": "json",
                                   "messages": HI, "options": {"num_predict": 2, **option}})
    assert r.status_code == 400 and "must be between 0 and 1" in r.json()["error"]
    r = post(engine, "/api/chat", {"model": MODEL, "stream": False, "messages": HI,
                                   "options": {"num_predict": 2}})
    assert r.status_code == 200 and r.json()["done"]


@pytest.mark.parametrize("body, message", [
    ({"messages": [{"role": "user", "content": "hi", "images": ["not base64!"]}]},
     "illegal base64 data at input byte 3"),
    ({"messages": [{"role": "user", "content": "hi", "images": ["aGVsbG8"]}]},
     "illegal base64 data at input byte"),
    ({"messages": [{"role": "user", "content": "hi", "images": [42]}]},
     "json: cannot unmarshal number into Go struct field ChatRequest.messages.images of type "
     "api.ImageData"),
    ({"messages": [{"role": "user", "content": "hi", "images": "aGVsbG8="}]},
     "json: cannot unmarshal string into Go struct field ChatRequest.messages.images"),
    ({"prompt": "hi", "images": ["%%%"]}, "illegal base64 data at input byte 0"),
])
def test_images_that_are_not_base64_are_400(engine, body, message):
    path = "/api/chat" if "messages" in body else "/api/generate"
    r = post(engine, path, {"model": MODEL, "stream": False, **body})
    assert r.status_code == 400 and r.json()["error"].startswith(message), r.text


@pytest.mark.parametrize("body", [
    {"messages": HI, "images": None, "options": {**GREEDY, "num_predict": 1e30}},
    {"messages": HI, "options": {"num_predict": 2, "top_k": 10**30, "seed": 2**70,
                                 "temperature": 1e300, "repeat_last_n": -1}},
    {"messages": HI, "options": {"num_predict": 2, "temperature": -3, "top_p": 0,
                                 "min_p": 1, "repeat_penalty": -2, "mirostat": 2}},
    {"messages": HI, "keep_alive": 1e300, "options": {"num_predict": 2}},
    {"messages": HI, "keep_alive": "9999999999999h", "options": {"num_predict": 2}},
    {"messages": [{"role": "user", "content": "hi", "images": ["aGVsbG8="]}],
     "options": {"num_predict": 2}},
    {"messages": [{"role": "assistant", "content": "", "tool_calls": "oops"}, *HI],
     "options": {"num_predict": 2}},
    {"messages": [{"role": "\ud800", "content": "\x00"}], "options": {"num_predict": 2}},
])
def test_odd_but_valid_requests_get_a_normal_answer(engine, client, body):
    r = post(engine, "/api/chat", {"model": MODEL, "stream": False, **body})
    assert r.status_code == 200, r.text
    assert r.json()["done"] and r.json()["eval_count"] <= 8192
    assert_alive(client)

"""Ollama's own rules for a request's options and turn fields (api/types.go: Options.FromMap,
ThinkValue; server/routes.go), the same at the web (before anything is queued) and at the
bundled engine: one module, chatbot.engine.options, holds them."""
import json
import logging
import uuid

import ollama
import pytest
import requests

from tests.conftest import MODEL, OPTIONS

HI = [{"role": "user", "content": "Hi"}]
# What a client that sends every option it has a field for sends when none is set.
EVERY_OPTION_NULL = dict.fromkeys((
    "numa", "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all",
    "vocab_only", "use_mmap", "use_mlock", "embedding_only", "num_thread", "num_keep", "seed",
    "num_predict", "top_k", "top_p", "tfs_z", "typical_p", "repeat_last_n", "temperature",
    "repeat_penalty", "presence_penalty", "frequency_penalty", "mirostat", "mirostat_tau",
    "mirostat_eta", "penalize_newline", "stop"))


def chat(url, options, **fields):
    return requests.post(url + "/api/chat", timeout=120, json={
        "model": MODEL, "messages": HI, "stream": False, "options": options, **fields})


@pytest.fixture(params=["web", "engine"])
def door(request, stack, engine_url):
    return stack.url if request.param == "web" else engine_url


def test_null_options_are_skipped_as_ollama_does(door):
    reply = chat(door, {**EVERY_OPTION_NULL, **OPTIONS})
    assert reply.status_code == 200, reply.text
    assert reply.json()["eval_count"] == OPTIONS["num_predict"]
    only_nulls = chat(door, {**EVERY_OPTION_NULL, "num_predict": 2})
    assert only_nulls.status_code == 200 and only_nulls.json()["eval_count"] == 2


def test_the_python_client_sends_null_options_and_is_served(stack):
    options = ollama.Options(temperature=0, seed=42, num_predict=3)
    assert "top_k" in options.model_dump()  # unset fields are there, as None
    body = {"model": MODEL, "messages": HI, "stream": False,
            "options": options.model_dump()}  # None -> JSON null, as a client sends it
    assert json.loads(json.dumps(body))["options"]["top_k"] is None
    reply = requests.post(stack.url + "/api/chat", json=body, timeout=120)
    assert reply.status_code == 200 and reply.json()["eval_count"] == 3


def test_a_null_stream_is_the_default_as_ollama_does(door, stack):
    """Ollama's `Stream *bool`: null is absent, so /api/chat streams; OpenAI's `Stream bool`:
    null is false, so /v1 answers one body."""
    with requests.post(door + "/api/chat", stream=True, timeout=120, json={
            "model": MODEL, "messages": HI, "stream": None, "options": OPTIONS}) as reply:
        assert reply.status_code == 200, reply.text
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert len(lines) > 1 and lines[-1]["done"] and not lines[0]["done"]
    reply = requests.post(stack.url + "/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": HI, "stream": None, "max_tokens": 2, "seed": 1})
    assert reply.status_code == 200 and reply.json()["object"] == "chat.completion"


@pytest.mark.parametrize("given, made", [(3.9, 3), (2.0, 2), (3.2, 3)])
def test_a_fraction_for_an_integer_option_is_truncated(door, given, made):
    reply = chat(door, {**OPTIONS, "num_predict": given})
    assert reply.status_code == 200, reply.text
    assert (reply.json()["eval_count"], reply.json()["done_reason"]) == (made, "length")


def test_unknown_and_removed_options_are_ignored_and_logged(stack, caplog):
    sid = str(uuid.uuid4())
    with caplog.at_level(logging.WARNING, logger="chatbot.engine.options"):
        reply = chat(stack.url, {**OPTIONS, "mirostat": 2, "tfs_z": "any", "no_such": [1]},
                     session_id=sid)
    assert reply.status_code == 200, reply.text
    warned = {r.getMessage() for r in caplog.records}
    assert {"invalid option provided: mirostat", "invalid option provided: tfs_z",
            "invalid option provided: no_such"} <= warned


@pytest.mark.parametrize("options, text", [
    ({"num_ctx": "4096"}, 'option "num_ctx" must be of type integer'),
    ({"top_k": True}, 'option "top_k" must be of type integer'),
    ({"seed": [1]}, 'option "seed" must be of type integer'),
    ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
    ({"repeat_penalty": False}, 'option "repeat_penalty" must be of type float32'),
    ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
    ({"stop": "END"}, 'option "stop" must be of type array'),
    ({"stop": ["END", 3]}, 'option "stop" must be of an array of strings'),
    ({"main_gpu": "0"}, 'option "main_gpu" must be of type integer'),
])
def test_a_wrong_type_gets_ollamas_text_at_both_doors(door, options, text):
    before = requests.get(door + "/api/ps", timeout=10).status_code
    reply = chat(door, {**OPTIONS, **options})
    assert (reply.status_code, reply.json()) == (400, {"error": text})
    assert before == 200


def test_a_bad_option_is_refused_before_it_is_queued(stack):
    sid = str(uuid.uuid4())
    reply = chat(stack.url, {"temperature": "hot"}, session_id=sid)
    assert reply.status_code == 400
    assert stack.rows(sid) == []


@pytest.mark.parametrize("fields, text", [
    ({"think": "extreme"}, 'invalid think value: "extreme" (must be "high", "medium", "low", '
                           '"max", true, or false)'),
    ({"think": 3}, 'think must be a boolean or string ("high", "medium", "low", "max", true, '
                   'or false)'),
    ({"top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
    ({"top_logprobs": -1}, "top_logprobs must be between 0 and 20"),
    ({"top_logprobs": 1.5}, "json: cannot unmarshal number 1.5 into Go struct field "
                            "ChatRequest.top_logprobs of type int"),
    ({"truncate": "no"}, "json: cannot unmarshal string into Go struct field "
                         "ChatRequest.truncate of type bool"),
    ({"shift": 0}, "json: cannot unmarshal number into Go struct field ChatRequest.shift of "
                   "type bool"),
    ({"logprobs": "yes"}, "json: cannot unmarshal string into Go struct field "
                          "ChatRequest.logprobs of type bool"),
    ({"_debug_render_only": True}, "_debug_render_only is not supported through chatbot: ask "
                                   "the Ollama host itself"),
])
def test_turn_fields_get_ollamas_text(stack, fields, text):
    reply = chat(stack.url, OPTIONS, **fields)
    assert (reply.status_code, reply.json()) == (400, {"error": text})


def test_think_levels_reach_the_model_which_cannot_think(stack):
    """Every form Ollama takes is let through; the bundled model has no thinking, so its
    answer is Ollama's own 400 (false and null are no request to think)."""
    for think in ("low", "medium", "high", "max", True):
        reply = chat(stack.url, OPTIONS, think=think)
        assert (reply.status_code, reply.json()) == (
            400, {"error": f'"{MODEL}" does not support thinking'})
    for think in (False, None):
        assert chat(stack.url, OPTIONS, think=think).status_code == 200


def test_nan_is_not_json(stack):
    reply = requests.post(stack.url + "/api/chat", timeout=10, data=(
        '{"model": "%s", "messages": [], "options": {"temperature": NaN}}' % MODEL))
    assert reply.status_code == 400 and "invalid character 'N'" in reply.json()["error"]


def test_roles_are_lowercased_as_ollama_does(stack):
    sid = str(uuid.uuid4())
    reply = requests.post(stack.url + "/api/chat", timeout=120, json={
        "model": MODEL, "session_id": sid, "stream": False, "options": OPTIONS,
        "messages": [{"role": "User", "content": "Hi"}]})
    assert reply.status_code == 200
    assert [r.role for r in stack.rows(sid)] == ["user", "assistant"]


def test_status_says_cloud_is_disabled_and_cloud_routes_are_404(stack):
    status = requests.get(stack.url + "/api/status", timeout=10)
    assert status.json() == {"cloud": {"disabled": True, "source": "config"}}
    for method, path in (("POST", "/api/me"), ("POST", "/api/signout"),
                         ("POST", "/api/experimental/web_search"),
                         ("POST", "/api/experimental/web_fetch")):
        reply = requests.request(method, stack.url + path, json={}, timeout=10)
        assert (reply.status_code, reply.json()) == (404, {"error": "404 page not found"})


def test_fields_of_removed_or_unknown_features_are_tolerated(stack):
    """Image generation's width/height/steps (Ollama 0.14.3, removed in 0.32.6) and fields
    nobody knows are ignored, as Go's decoder ignores them."""
    reply = chat(stack.url, OPTIONS, width=512, height=512, steps=4, no_such_field={"a": 1})
    assert reply.status_code == 200 and reply.json()["done"]


def nested(depth):
    schema = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


DEEP = nested(40)


@pytest.mark.parametrize("schema, text", [
    ({"type": "string", "maxLength": 100000},
     "invalid format: maxLength 100000 is above 500 (FORMAT_MAX_REPEAT)"),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 5000},
     "invalid format: minItems 5000 is above 500 (FORMAT_MAX_REPEAT)"),
    ({"type": "string", "pattern": "^a{1,50000}$"},
     "invalid format: pattern repeats {1,50000}, above 500 (FORMAT_MAX_REPEAT)"),
    ({"enum": list(range(2000))}, "invalid format: enum has 2000 values, above 1000 "
                                  "(FORMAT_MAX_ENUM)"),
    (DEEP,
     "invalid format: the schema nests deeper than 32 levels (FORMAT_MAX_DEPTH)"),
])
def test_unbounded_format_schemas_are_refused_before_they_are_queued(stack, schema, text):
    sid = str(uuid.uuid4())
    reply = chat(stack.url, OPTIONS, format=schema, session_id=sid)
    assert (reply.status_code, reply.json()) == (400, {"error": text})
    assert stack.rows(sid) == []
    openai_door = requests.post(stack.url + "/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": HI, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    assert openai_door.status_code == 400
    assert openai_door.json()["error"]["message"] == text


def test_a_bounded_schema_still_shapes_the_answer(stack):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 5}},
              "required": ["answer"]}
    reply = chat(stack.url, {**OPTIONS, "num_predict": 30}, format=schema)
    assert reply.status_code == 200
    assert len(json.loads(reply.json()["message"]["content"])["answer"]) <= 5

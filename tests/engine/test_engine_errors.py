"""Errors exactly as Ollama words them: JSON bodies with the right status, never HTML."""
import json

import ollama
import pytest
import requests

from chatbot.engine import completions
from chatbot.engine.server import create_engine_app

from .conftest import BROKEN_MODEL, MODEL

POSTS = ["/api/chat", "/api/generate", "/api/show", "/api/embed", "/api/embeddings"]


@pytest.mark.parametrize("call", [
    lambda c: c.chat(model="nope", messages=[{"role": "user", "content": "hi"}]),
    lambda c: c.generate(model="nope", prompt="hi"),
    lambda c: c.show("nope"),
    lambda c: c.embed(model="nope", input="hi"),
    lambda c: c.embeddings(model="nope", prompt="hi"),
    lambda c: list(c.chat(model="nope:7b", messages=[], stream=True)),
])
def test_unknown_model_is_404(client, call):
    with pytest.raises(ollama.ResponseError) as exc:
        call(client)
    assert exc.value.status_code == 404
    assert exc.value.error in ("model 'nope' not found", "model 'nope:7b' not found")


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("body", [{}, {"model": ""}, {"model": None, "prompt": "x"}])
def test_missing_model_is_400(engine, path, body):
    r = requests.post(engine + path, json=body)
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


@pytest.mark.parametrize("path", POSTS)
def test_bodies_that_are_not_json_objects(engine, path):
    cases = [(b"", "missing request body"), (b"  \n", "missing request body"),
             (b'{"model": "x"', "unexpected EOF"),
             (b"{model: 1}", "invalid character 'm' looking for beginning of value"),
             (b"[1, 2]", "json: cannot unmarshal array into Go value of type api.")]
    for raw, message in cases:
        r = requests.post(engine + path, data=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.headers["Content-Type"] == "application/json"
        assert r.json()["error"].startswith(message), (raw, r.text)


def test_wrongly_typed_fields_are_400(engine):
    for body in [{"model": MODEL, "messages": "hi"}, {"model": MODEL, "messages": [1]},
                 {"model": MODEL, "options": [1]}, {"model": MODEL, "stream": "yes"},
                 {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                  "options": {"num_predict": "many"}},
                 {"model": MODEL, "messages": [], "options": {"num_ctx": "big"}},
                 {"model": MODEL, "messages": [], "keep_alive": "soon"}]:
        r = requests.post(engine + "/api/chat", json=body)
        assert r.status_code == 400 and "error" in r.json(), body


def test_unknown_routes_and_methods_answer_json(engine):
    r = requests.get(engine + "/api/nothing")
    assert (r.status_code, r.json()) == (404, {"error": "404 page not found"})
    r = requests.get(engine + "/api/chat")
    assert r.status_code == 405 and r.json()["error"].startswith("405")


def test_unsupported_features_are_400(client):
    hi = [{"role": "user", "content": "hi"}]  # tools are served: test_engine_tools.py
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(model=MODEL, messages=hi, think=True)
    assert exc.value.status_code == 400 and "does not support thinking" in exc.value.error


def test_corrupt_model_file_fails_as_json(engine):
    r = requests.post(engine + "/api/generate", json={"model": BROKEN_MODEL, "prompt": "hi",
                                                      "stream": False})
    assert r.status_code == 500 and "not a GGUF file" in r.json()["error"]


class FakeLlama:
    """Enough of a Llama for the request path; generation itself is replaced below."""

    input_ids, n_tokens = [0] * 8192, 0  # an empty context: nothing to reuse

    def tokenize(self, text, add_bos=True, special=False):
        return list(range(len(text.split())))

    def n_ctx(self):
        return 8192


def test_failure_after_first_byte_is_one_error_line(monkeypatch):
    """A fault the real model cannot be made to produce on demand: the stream breaks."""
    def broken(llm, tokens, opts, stats, cancel=None):
        yield "Hel"
        raise RuntimeError("llama_decode returned -3")

    app = create_engine_app()
    engine = app.extensions["chatbot_engine"]
    monkeypatch.setattr(engine.registry, "load_chat", lambda *a, **k: (FakeLlama(), 0))
    monkeypatch.setattr(completions.generation, "generate", broken)
    with app.test_client() as http:
        r = http.post("/api/chat", json={"model": MODEL,
                                          "messages": [{"role": "user", "content": "hi"}]})
        lines = [json.loads(line) for line in r.get_data(as_text=True).splitlines()]
    assert r.status_code == 200
    assert lines[0]["message"]["content"] == "Hel" and not lines[0]["done"]
    assert lines[-1] == {"error": "llama_decode returned -3"} and len(lines) == 2
    assert not engine.lock.locked()

"""GET /api/openapi.json describes every route the app has, and real requests validate."""
import json
import re

import jsonschema_rs  # comes with schemathesis (test extras)
import pytest

from chatbot.api.openapi import DOCUMENT
from tests.conftest import MODEL, migrated_app

UUID = "6f1c7d3e-2b0a-4c7e-9a51-0d3f5e8b9c21"


@pytest.fixture(scope="module")
def app(redis_url, tmp_path_factory):
    db = tmp_path_factory.mktemp("openapi") / "x.db"
    # No upstream is asked: the document and the URL map are all these tests read.
    return migrated_app(redis_url, "http://127.0.0.1:9", f"sqlite:///{db}")[0]


@pytest.fixture(scope="module")
def doc(app):
    resp = app.test_client().get("/api/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    return resp.get_json()


def served(app):
    """{(OpenAPI path, method)} for every URL rule; HEAD only where it is not GET's twin."""
    ops = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        methods = rule.methods - {"OPTIONS"} - ({"HEAD"} if "GET" in rule.methods else set())
        ops |= {(path, m.lower()) for m in methods}
    return ops


def test_every_route_of_the_app_is_described(app, doc):
    described = {(path, m) for path, item in doc["paths"].items() for m in item}
    assert sorted(served(app) - described) == []  # a new route needs its entry in openapi.py
    twins = {(path, "head") for path, m in served(app) if m == "get"}
    assert sorted(described - served(app) - twins) == []  # no entry for a route that is gone


def test_the_document_is_openapi_3_with_the_error_shape(doc):
    assert doc == json.loads(json.dumps(DOCUMENT))  # what tests/test_fuzz.py fuzzes
    assert doc["openapi"].startswith("3.")
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and error["properties"]["error"]["type"] == "string"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], f"{method} {path} has no responses"
            assert all(re.fullmatch(r"\d{3}|default", code) for code in op["responses"])
    # Every $ref points at a schema that exists.
    refs = re.findall(r"#/components/schemas/(\w+)", str(doc))
    assert set(refs) <= set(doc["components"]["schemas"])


VALID = {  # real clients' requests (README, Ollama's and OpenAI's API docs)
    ("/api/chat", "post"): [
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        {"model": MODEL, "session_id": UUID, "stream": False, "keep_alive": "5m", "think": True,
         "format": {"type": "object", "properties": {"a": {"type": "string"}}},
         "options": {"temperature": 0, "seed": 42, "num_predict": 12, "stop": ["\n"],
                     "num_ctx": 2048, "mirostat": 0},
         "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
         "messages": [{"role": "system", "content": "be brief"},
                      {"role": "user", "content": "look", "images": ["aGk="]},
                      {"role": "assistant", "content": "", "thinking": "hmm",
                       "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
                      {"role": "tool", "content": "42", "tool_name": "f"}]},
        {"model": MODEL, "messages": [], "keep_alive": 0},
    ],
    ("/api/generate", "post"): [
        {"model": MODEL, "prompt": "Why is the sky blue?"},
        {"model": MODEL, "prompt": "def f(", "suffix": "return 1", "system": "s", "template": "t",
         "raw": True, "context": [1, 2, 3], "images": ["aGk="], "stream": False, "format": "json",
         "options": {"top_k": 20, "top_p": 0.9}, "keep_alive": -1, "think": "low",
         "session_id": UUID},
    ],
    ("/api/show", "post"): [{"model": MODEL}, {"name": MODEL, "verbose": True}],
    ("/api/embed", "post"): [{"model": MODEL, "input": "hi"},
                             {"model": MODEL, "input": ["a", "b"], "truncate": True,
                              "options": {"temperature": 0}, "keep_alive": "1m"}],
    ("/api/embeddings", "post"): [{"model": MODEL, "prompt": "hi"}],
    ("/api/pull", "post"): [{"model": MODEL}, {"name": MODEL, "insecure": False, "stream": False}],
    ("/api/push", "post"): [{"model": "me/x:1", "insecure": True}],
    ("/api/create", "post"): [{"model": "x", "from": MODEL, "stream": False},
                              {"model": "y", "files": {"a.gguf": "sha256:" + "0" * 64},
                               "parameters": {"temperature": 0.1}, "license": ["MIT"]}],
    ("/api/copy", "post"): [{"source": MODEL, "destination": "x"}],
    ("/api/delete", "delete"): [{"model": "x"}, {"name": "x"}],
    ("/v1/chat/completions", "post"): [
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        {"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
         "max_tokens": 5, "temperature": 0.2, "stop": "\n", "seed": 1,
         "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
         "messages": [{"role": "user", "content": [
             {"type": "text", "text": "what is this"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
             {"role": "tool", "content": "1", "name": "f", "tool_call_id": "c1"}]},
    ],
    ("/v1/completions", "post"): [{"model": MODEL, "prompt": "hi", "max_tokens": 4},
                                  {"model": MODEL, "prompt": ["a"], "suffix": "b"}],
    ("/v1/embeddings", "post"): [{"model": MODEL, "input": ["a", "b"]}],
    ("/v1/messages", "post"): [  # the anthropic SDK's and Claude Code's requests
        {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]},
        {"model": MODEL, "max_tokens": 64, "stream": True, "temperature": 0, "top_p": 0.9,
         "top_k": 40, "stop_sequences": ["\n"], "metadata": {"user_id": "u"},
         "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
         "thinking": {"type": "enabled", "budget_tokens": 1024},
         "tool_choice": {"type": "auto"},
         "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
         "messages": [
             {"role": "user", "content": [
                 {"type": "text", "text": "look"},
                 {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                              "data": "aGk="}}]},
             {"role": "assistant", "content": [
                 {"type": "thinking", "thinking": "hmm", "signature": ""},
                 {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}]},
             {"role": "user", "content": [
                 {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                 {"type": "tool_result", "tool_use_id": "toolu_1",
                  "content": [{"type": "text", "text": "42"}]}]}]},
    ],
    ("/api/sessions/{sid}", "patch"): [{"title": "x"}, {"title": None}, {"title": ""}],
    ("/api/sessions/import", "post"): [
        {"version": 1, "id": UUID, "title": None, "created_at": "2025-01-01T00:00:00Z",
         "meta": {"truncations": 1}, "threads": {MODEL: [
             {"role": "user", "content": "hi", "tokens": 1, "status": "ok", "request_id": "r1",
              "created_at": "2025-01-01T00:00:00Z"},
             {"role": "assistant", "content": "", "status": "cancelled", "thinking": "t",
              "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}]}},
        {"threads": {}},
    ],
}


def _validator(doc, path, method):
    op = doc["paths"][path][method]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema_rs.validator_for({**schema, "components": doc["components"]},
                                      validate_formats=True)


@pytest.mark.parametrize("path,method", sorted(VALID))
def test_real_requests_validate(doc, path, method):
    validator = _validator(doc, path, method)
    for body in VALID[(path, method)]:
        errors = [e.message for e in validator.iter_errors(body)]
        assert errors == [], body


def test_bad_requests_do_not_validate(doc):
    chat = _validator(doc, "/api/chat", "post")
    for body in ({"messages": []}, {"model": MODEL, "messages": "hi"},
                 {"model": MODEL, "messages": [{"role": "wizard"}]},
                 {"model": MODEL, "session_id": "abc"}, {"model": MODEL, "stream": "yes"},
                 {"model": MODEL, "options": {"num_ctx": "4096"}}):
        assert not chat.is_valid(body), body
    assert not _validator(doc, "/api/sessions/{sid}", "patch").is_valid({"title": "x", "meta": {}})
    messages = _validator(doc, "/v1/messages", "post")
    for body in ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                 {"model": MODEL, "max_tokens": 0, "messages": []},
                 {"model": MODEL, "max_tokens": 9, "messages": [{"role": "tool", "content": ""}]},
                 {"model": MODEL, "max_tokens": 9, "messages": [
                     {"role": "user", "content": [{"type": "document"}]}]}):
        assert not messages.is_valid(body), body

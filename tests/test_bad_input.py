"""Bad requests get Ollama-style errors before anything is queued or stored."""
import time

import pytest
import requests

from chatbot.ops import procs
from tests.conftest import MODEL, migrated_app

GOOD = {"role": "user", "content": "hi"}


@pytest.mark.parametrize("path,body,status,error", [
    ("/api/chat", b"{not json", 400, "invalid JSON"),
    ("/api/chat", b"", 400, "missing request body"),
    ("/api/chat", {"messages": [GOOD]}, 400, "model is required"),
    ("/api/chat", {"model": "", "messages": [GOOD]}, 400, "model is required"),
    ("/api/chat", {"model": "nope:1b", "messages": [GOOD]}, 404, "model 'nope:1b' not found"),
    ("/api/chat", {"model": MODEL, "messages": "hi"}, 400,
     "cannot unmarshal string into Go struct field ChatRequest.messages"),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "invalid message role 'wizard'"),
    ("/api/chat", {"model": MODEL, "messages": [GOOD], "session_id": "abc"}, 400,
     "invalid session_id 'abc': must be a UUID"),
    ("/api/chat", {"model": MODEL, "messages": [GOOD], "stream": "yes"}, 400, "stream"),
    ("/api/generate", {"prompt": "hi"}, 400, "model is required"),
    ("/api/generate", {"model": "nope", "prompt": "hi"}, 404, "model 'nope' not found"),
    ("/api/generate", {"model": MODEL, "prompt": 5}, 400, "GenerateRequest.prompt"),
    ("/api/chat", {"model": MODEL, "messages": [GOOD], "options": "fast"}, 400,
     "cannot unmarshal string into Go struct field ChatRequest.options"),
    ("/api/chat", {"model": MODEL, "messages": [GOOD], "options": {"num_ctx": "4096"}}, 400,
     'option "num_ctx" must be of type integer'),
    ("/api/generate", {"model": MODEL, "prompt": "hi", "options": {"temperature": "hot"}}, 400,
     'option "temperature" must be of type float32'),
    ("/api/chat", {"model": MODEL, "messages": [GOOD], "options": {"stop": [1]}}, 400,
     'option "stop" must be of an array of strings'),
    ("/api/chat", b'{"model": "x", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
     "invalid JSON"),
    ("/api/show", {"model": "nope"}, 404, "not found"),
    ("/api/nowhere", {}, 404, "404 page not found"),
])
def test_bad_input_is_refused_and_nothing_is_stored(stack, path, body, status, error):
    before = stack.count("messages"), stack.count("sessions")
    send = {"data": body} if isinstance(body, bytes) else {"json": body}
    resp = requests.post(stack.url + path, timeout=10, **send)
    assert resp.status_code == status
    assert resp.headers["Content-Type"].startswith("application/json")
    assert error in resp.json()["error"]
    assert (stack.count("messages"), stack.count("sessions")) == before


def test_lone_surrogates_are_replaced_as_ollama_does(stack):
    """Go's JSON decoder turns a lone surrogate into U+FFFD; so do we, before anything is
    stored (SQLite and PostgreSQL refuse invalid UTF-8)."""
    import uuid

    sid = str(uuid.uuid4())
    body = '{"model": "%s", "session_id": "%s", "stream": false, "options": {"num_predict": 2},' \
           ' "messages": [{"role": "user", "content": "a\\ud800b"}]}' % (MODEL, sid)
    resp = requests.post(stack.url + "/api/chat", data=body, timeout=60)
    assert resp.status_code == 200 and resp.json()["done"]
    assert stack.rows(sid)[0].content == "a\ufffdb"


def test_bad_session_header_is_refused(stack):
    resp = requests.post(stack.url + "/api/chat", json={"model": MODEL, "messages": [GOOD]},
                         headers={"X-Session-ID": "12"}, timeout=10)
    assert resp.status_code == 400 and "invalid session_id" in resp.json()["error"]


def test_unreachable_upstream_is_503_within_2s_without_naming_the_host(redis_url, tmp_path):
    host = f"http://127.0.0.1:{procs.free_port()}"  # nothing listens there
    app = migrated_app(redis_url, host, f"sqlite:///{tmp_path / 'x.db'}")[0]
    started = time.monotonic()
    resp = app.test_client().post("/api/chat", json={"model": MODEL, "messages": [GOOD]})
    assert time.monotonic() - started < 2
    error = resp.get_json()["error"]
    assert resp.status_code == 503 and "could not connect to ollama" in error
    assert host not in error and "error id" in error  # the host is in the log, not the reply


def test_root_version_tags_show_come_through(stack, engine_url):
    assert requests.get(stack.url + "/", timeout=5).text == "Ollama is running"
    assert requests.head(stack.url + "/", timeout=5).status_code == 200
    ours = requests.get(stack.url + "/api/tags", timeout=5).json()
    assert ours == requests.get(engine_url + "/api/tags", timeout=5).json()
    assert requests.get(stack.url + "/api/version", timeout=5).json()["version"]
    show = requests.post(stack.url + "/api/show", json={"model": MODEL}, timeout=30).json()
    assert "general.architecture" in show["model_info"]

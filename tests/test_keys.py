"""Many users: keys A and B and an admin over every route. A's sessions and requests do not
exist for B, the admin sees everything, open routes stay open, model management is the
admin's, limits and rate limits answer before anything is queued."""
import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import ollama
import openai
import pytest
import requests

from chatbot.store import keys as api_keys
from tests.conftest import MODEL, serve
from tests.test_compat import JS_DIR, node_binary
from tests.test_queue import LONG, Background, chat_body, wait_for

A, B, ROOT = "key-alice-0123456789", "key-bob-0123456789", "key-root-0123456789"
SHORT = {"temperature": 0, "seed": 42, "num_predict": 3}


def bearer(key):
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture(scope="module")
def keyed(stack):
    app = stack.app_with({"API_KEYS": f"alice={A},bob={B}", "ADMIN_API_KEYS": f"root={ROOT}",
                          "RATE_LIMIT": "1000/minute"})
    server, url = serve(app)
    yield app, url
    server.shutdown()


def chat(url, key, sid=None, content="Hi", **extra):
    body = {"model": MODEL, "stream": False, "options": SHORT,
            "messages": [{"role": "user", "content": content}], **extra}
    if sid:
        body["session_id"] = sid
    return requests.post(url + "/api/chat", json=body, headers=bearer(key), timeout=120)


def call(url, key, method, path, **kwargs):
    return requests.request(method, url + path, headers=bearer(key), timeout=60, **kwargs)


PROTECTED = [("POST", "/api/chat"), ("POST", "/api/generate"), ("GET", "/api/tags"),
             ("POST", "/api/show"), ("GET", "/api/ps"), ("POST", "/api/embed"),
             ("POST", "/api/pull"), ("DELETE", "/api/delete"), ("POST", "/api/copy"),
             ("GET", "/api/queue"), ("GET", "/api/queue/x"), ("DELETE", "/api/queue/x"),
             ("GET", "/api/events"), ("GET", "/api/sessions"), ("POST", "/api/sessions/import"),
             ("GET", f"/api/sessions/{uuid.uuid4()}"), ("GET", "/metrics")]


@pytest.mark.parametrize("key", [None, "wrong-key-0123456789"])
def test_no_key_or_an_unknown_one_gets_401_and_open_routes_stay_open(keyed, key):
    app, url = keyed
    before = app.extensions["redis"].zcard("chatbot:waiting:ollama")
    for method, path in PROTECTED:
        resp = call(url, key, method, path, json={"model": MODEL})
        assert (resp.status_code, resp.json()) == (401, {"error": "unauthorized"}), path
    v1 = call(url, key, "GET", "/v1/models")
    assert v1.status_code == 401 and v1.json()["error"]["message"] == "unauthorized"
    for path in ("/", "/api/version", "/healthz"):
        assert call(url, key, "GET", path).status_code == 200, path
    assert call(url, key, "HEAD", "/").status_code == 200
    assert app.extensions["redis"].zcard("chatbot:waiting:ollama") == before


def test_sessions_belong_to_the_key_that_made_them(keyed, stack):
    _, url = keyed
    made = chat(url, A)
    assert made.status_code == 200
    sid = made.headers["X-Session-ID"]
    assert chat(url, A, sid, "Again").status_code == 200
    # B: as if the session did not exist, on every route that names it.
    assert chat(url, B, sid).status_code == 404
    assert chat(url, B, sid).json() == {"error": f"session '{sid}' not found"}
    for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/archive"),
                         ("POST", "/restore"), ("GET", "/export"), ("GET", "/export?format=markdown")]:
        resp = call(url, B, method, f"/api/sessions/{sid}{path}", json={"title": "mine now"})
        assert resp.status_code == 404, (method, path)
    listed = [s["id"] for s in call(url, B, "GET", "/api/sessions?per_page=100").json()["sessions"]]
    assert sid not in listed
    v1 = openai.OpenAI(base_url=url + "/v1", api_key=B, default_headers={"X-Session-ID": sid})
    with pytest.raises(openai.NotFoundError):
        v1.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    # A and the admin see it; nothing B tried changed it.
    mine = call(url, A, "GET", f"/api/sessions/{sid}").json()
    assert mine["message_count"] == 4 and mine["title"] is None
    assert sid in [s["id"] for s in call(url, A, "GET", "/api/sessions?per_page=100").json()["sessions"]]
    assert call(url, ROOT, "GET", f"/api/sessions/{sid}").status_code == 200
    assert chat(url, ROOT, sid, "From the admin").status_code == 200
    # An import is owned by its importer.
    export = call(url, A, "GET", f"/api/sessions/{sid}/export").json()
    export.pop("id")
    imported = call(url, B, "POST", "/api/sessions/import", json=export).json()["id"]
    assert call(url, B, "GET", f"/api/sessions/{imported}").status_code == 200
    assert call(url, A, "GET", f"/api/sessions/{imported}").status_code == 404


def test_requests_and_their_events_belong_to_their_key(keyed):
    app, url = keyed
    rid = f"alice-{uuid.uuid4()}"
    slow = Background(url, chat_body(LONG), rid, headers=bearer(A))
    wait_for(lambda: call(url, A, "GET", f"/api/queue/{rid}").status_code == 200)
    assert call(url, B, "GET", f"/api/queue/{rid}").status_code == 404
    assert call(url, B, "DELETE", f"/api/queue/{rid}").status_code == 404
    assert call(url, B, "GET", f"/api/events?channel={rid}").status_code == 404
    seen_by_b = json.dumps(call(url, B, "GET", "/api/queue").json())
    assert rid not in seen_by_b and "running_for" in seen_by_b  # counts and places only
    assert rid in json.dumps(call(url, A, "GET", "/api/queue").json())
    # B subscribing to the same id before A's next request hears nothing of A's.
    future = f"alice-next-{uuid.uuid4()}"
    sse = requests.get(f"{url}/api/events?channel={future}", headers=bearer(B), stream=True,
                       timeout=30)
    assert call(url, ROOT, "DELETE", f"/api/queue/{rid}").status_code == 200  # admin may
    slow.join(30)
    assert call(url, A, "POST", "/api/chat", json=chat_body(SHORT, stream=False),
                ).status_code == 200
    requests.post(url + "/api/chat", json=chat_body(SHORT, stream=False),
                  headers={**bearer(A), "X-Request-ID": future}, timeout=60)
    heard = b""
    for chunk in sse.iter_content(chunk_size=None):
        heard += chunk
        if b"keep-alive" in heard:
            break
    sse.close()
    assert b"event:" not in heard


def test_model_management_is_the_admins(keyed):
    _, url = keyed
    alias = f"alias-{uuid.uuid4().hex[:6]}:latest"
    for key in (A, B):
        for method, path, body in [("POST", "/api/copy", {"source": MODEL, "destination": alias}),
                                   ("DELETE", "/api/delete", {"model": MODEL}),
                                   ("POST", "/api/pull", {"model": MODEL}),
                                   ("POST", "/api/create", {"model": alias, "from": MODEL}),
                                   ("POST", "/api/push", {"model": MODEL}),
                                   ("HEAD", "/api/blobs/sha256:00", None)]:
            resp = call(url, key, method, path, json=body)
            assert resp.status_code == 403, (key, path)
    admin = ollama.Client(host=url, headers=bearer(ROOT))
    assert admin.copy(MODEL, alias).status == "success"
    assert admin.delete(alias).status == "success"
    assert call(url, A, "POST", "/api/embed", json={"model": MODEL, "input": "hi"}).status_code == 200


def test_model_management_can_be_switched_off(stack):
    app = stack.app_with({"ALLOW_MODEL_MANAGEMENT": False})
    resp = app.test_client().post("/api/copy", json={"source": MODEL, "destination": "x"})
    assert resp.status_code == 403 and "switched off" in resp.get_json()["error"]


def test_real_clients_chat_with_a_key(keyed):
    _, url = keyed
    reply = ollama.Client(host=url, headers=bearer(A)).chat(
        MODEL, messages=[{"role": "user", "content": "Hi"}], options=SHORT)
    assert reply.done and reply.message.content
    completion = openai.OpenAI(base_url=url + "/v1", api_key=A).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert completion.choices[0].message.content
    out = subprocess.run([node_binary(), "client.mjs", url, MODEL, A], cwd=JS_DIR,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["done"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="nope").models.list()


def test_keys_made_with_the_cli_work_until_revoked(keyed, stack):
    app, url = keyed
    with app.app_context():
        made = api_keys.create(f"carol-{uuid.uuid4().hex[:6]}")
        app.extensions["keys"].forget()
        try:
            assert call(url, made, "GET", "/api/tags").status_code == 200
            name = [k["name"] for k in api_keys.listing() if k["name"].startswith("carol-")][0]
            api_keys.revoke(name)
            app.extensions["keys"].forget()
        finally:  # the shared database had keys on: back to keys off for the other tests
            api_keys.turn_off(stack.app.extensions["keys"])
            stack.app.extensions["keys"].forget()
    assert call(url, made, "GET", "/api/tags").status_code == 401


def test_rate_limit_gives_429_and_recovers(stack):
    app = stack.app_with({"API_KEYS": f"alice={A},bob={B}", "RATE_LIMIT": "3 per 2 seconds"})
    client = app.test_client()
    time.sleep(2 - time.time() % 2 + 0.05)  # start at the beginning of a window
    codes = [client.get("/api/tags", headers=bearer(A)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    refused = client.get("/api/tags", headers=bearer(A))
    assert "rate limit exceeded" in refused.get_json()["error"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert client.get("/api/tags", headers=bearer(B)).status_code == 200  # per key
    time.sleep(2.1)
    assert client.get("/api/tags", headers=bearer(A)).status_code == 200


def test_rate_limit_per_key_counts_every_route_together(stack):
    app = stack.app_with({"API_KEYS": f"alice={A},bob={B}", "RATE_LIMIT_PER_KEY": "4 per 2 seconds"})
    client = app.test_client()
    time.sleep(2 - time.time() % 2 + 0.05)  # start at the beginning of a window
    codes = [client.get(path, headers=bearer(A)).status_code
             for path in ("/api/tags", "/api/ps", "/api/version", "/api/queue", "/api/tags",
                          "/api/ps")]
    # /api/version is open (not counted): four counted, the fifth refused
    assert codes == [200, 200, 200, 200, 200, 429]
    assert client.get("/api/ps", headers=bearer(B)).status_code == 200  # per key


def test_token_quota_gives_429_before_anything_is_queued(stack):
    app = stack.app_with({"API_KEYS": f"quota-{uuid.uuid4().hex[:6]}={A}-quota",
                          "TOKENS_PER_HOUR": 5})
    server, url = serve(app)
    try:
        assert chat(url, A + "-quota").status_code == 200  # 3 tokens
        assert chat(url, A + "-quota").status_code == 200  # 6: over, counted after the reply
        refused = chat(url, A + "-quota")
        assert refused.status_code == 429 and "token limit" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) > 0
    finally:
        server.shutdown()


def test_requests_sent_at_once_overshoot_the_token_quota_by_one_reservation_at_most(stack):
    """Each request reserves its num_predict at admission: of eight sent at once against 60
    tokens an hour, those admitted can generate at most 60 plus one reservation."""
    key = f"{A}-burst"
    app = stack.app_with({"API_KEYS": f"burst-{uuid.uuid4().hex[:6]}={key}",
                          "TOKENS_PER_HOUR": 60})
    server, url = serve(app)
    body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "Count."}],
            "options": {"temperature": 0, "seed": 1, "num_predict": 30}}
    try:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: requests.post(
                url + "/api/chat", json=body, headers=bearer(key), timeout=120), range(8)))
        done = [r.json() for r in replies if r.status_code == 200]
        assert {r.status_code for r in replies} <= {200, 429} and len(done) <= 3
        assert sum(d["eval_count"] for d in done) <= 60 + 30
    finally:
        server.shutdown()


@pytest.mark.parametrize("body,error", [
    ({"messages": [{"role": "user", "content": "x"}] * 1001}, "too many messages"),
    ({"messages": [{"role": "user", "content": "x" * 1_000_001}]}, "too long"),
    ({"messages": [{"role": "user", "content": "hi", "images": "abc"}]}, "images"),
    ({"messages": [{"role": "user", "content": "hi", "images": ["not base64!"]}]}, "base64"),
    ({"messages": [{"role": "user", "content": "hi"}], "options": {"num_ctx": 10 ** 7}}, "num_ctx"),
    ({"messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 10 ** 6}},
     "num_predict"),
    ({"messages": [{"role": "user", "content": "hi"}], "options": {"stop": ["x"] * 17}}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "options": {"stop": ["x" * 513]}}, "stop"),
])
def test_limits_are_checked_before_queueing(stack, body, error):
    before = stack.count("messages"), stack.count("sessions")
    resp = requests.post(stack.url + "/api/chat", json={"model": MODEL, **body}, timeout=30)
    assert resp.status_code == 400 and error in resp.json()["error"]
    assert (stack.count("messages"), stack.count("sessions")) == before


def test_a_huge_body_is_413_before_anything_is_read(stack):
    resp = requests.post(stack.url + "/api/chat", data=b"{" + b" " * (17 * 1024 * 1024) + b"}",
                         timeout=60)
    assert resp.status_code == 413 and "too large" in resp.json()["error"]


def test_without_keys_nothing_changes(stack):
    assert chat(stack.url, None).status_code == 200
    assert requests.get(stack.url + "/api/sessions", timeout=10).status_code == 200
    assert requests.get(stack.url + "/metrics", timeout=10).status_code == 200


def test_cors_is_off_unless_origins_are_listed(stack):
    origin = {"Origin": "http://page.example", "Access-Control-Request-Method": "POST"}
    closed = stack.app_with({}).test_client().options("/api/chat", headers=origin)
    assert "Access-Control-Allow-Origin" not in closed.headers
    opened = stack.app_with({"CORS_ORIGINS": "http://page.example"}).test_client()
    assert opened.options("/api/chat", headers=origin).headers[
        "Access-Control-Allow-Origin"] == "http://page.example"
    other = opened.options("/api/chat", headers={**origin, "Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_audit_lines_name_the_key_and_never_the_content(keyed):
    import io
    import logging

    from chatbot.ops import logs

    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    audit = logging.getLogger("chatbot.audit")
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)
    try:
        _, url = keyed
        assert chat(url, A, content="my secret recipe").status_code == 200
    finally:
        audit.removeHandler(handler)
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert any(e["message"] == "POST /api/chat 200" and e.get("key") == "alice"
               and e.get("session_id") for e in lines)
    assert "secret recipe" not in captured.getvalue()

"""What one key may hold: its stored bytes (MAX_STORAGE_BYTES_PER_KEY), what one request holds
in Redis while it waits (MAX_JOB_BYTES), documents per session; a refused turn's images are
not kept; model listings and descriptions are kept briefly instead of asked every time."""
import uuid

import requests

from chatbot import store
from chatbot.store import Message, db, usage
from tests.conftest import MODEL, serve

SHORT = {"temperature": 0, "seed": 42, "num_predict": 3}


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def chat(url, key, content="Hi"):
    return requests.post(url + "/api/chat", headers=bearer(key), timeout=120,
                         json={"model": MODEL, "stream": False, "options": SHORT,
                               "messages": [{"role": "user", "content": content}]})


def imported(url, key, chars):
    said = [{"role": "user", "content": "x" * chars}, {"role": "assistant", "content": "ok"}]
    return requests.post(url + "/api/sessions/import", headers=bearer(key), timeout=30,
                         json={"threads": {MODEL: said}})


def test_a_key_past_its_storage_limit_is_refused_and_the_others_are_not(stack):
    tag = uuid.uuid4().hex[:6]
    heavy, light = f"heavy-{tag}", f"light-{tag}"
    keys = {"API_KEYS": f"{heavy}=key-heavy-{tag}-0123456789,{light}=key-light-{tag}-0123456789"}
    h, l = f"key-heavy-{tag}-0123456789", f"key-light-{tag}-0123456789"
    free = stack.app_with(keys)
    limited = stack.app_with({**keys, "MAX_STORAGE_BYTES_PER_KEY": 4000})
    (free_server, free_url), (server, url) = serve(free), serve(limited)
    try:
        made = imported(free_url, h, 5000)  # stored while there was no limit
        assert made.status_code == 201
        with limited.app_context():
            assert usage.bytes_used([heavy])[heavy] >= 5000
        before = stack.count("messages")
        refused = chat(url, h)
        assert refused.status_code == 413, refused.text
        assert "MAX_STORAGE_BYTES_PER_KEY" in refused.json()["error"]
        assert imported(url, h, 10).status_code == 413
        doc = requests.post(f"{url}/api/sessions/{uuid.uuid4()}/documents", headers=bearer(h),
                            json={"name": "a.txt", "content": "hello"}, timeout=30)
        assert doc.status_code == 413
        assert stack.count("messages") == before  # nothing stored, nothing queued
        # The other key is not touched; one import bigger than its room is refused whole.
        assert chat(url, l).status_code == 200
        assert imported(url, l, 5000).status_code == 413
        assert imported(url, l, 1000).status_code == 201
        # Metrics and `flask keys list` show each key's bytes.
        metrics = requests.get(url + "/metrics", headers=bearer(l), timeout=30).text
        assert f'chatbot_key_storage_bytes{{key="{heavy}"}}' in metrics
        listed = limited.test_cli_runner().invoke(args=["keys", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        # Deleting the session frees the room at once.
        gone = requests.delete(f"{url}/api/sessions/{made.json()['id']}", headers=bearer(h),
                               timeout=30)
        assert gone.status_code == 200
        assert chat(url, h).status_code == 200
    finally:
        free_server.shutdown()
        server.shutdown()


def test_a_request_too_big_to_queue_is_413_and_nothing_is_kept(stack):
    app = stack.app_with({"MAX_JOB_BYTES": 20_000})
    client = app.test_client()
    before = stack.count("messages"), stack.count("sessions")
    resp = client.post("/api/chat", json={"model": MODEL, "stream": False, "options": SHORT,
                                          "messages": [{"role": "user", "content": "x" * 30_000}]})
    assert resp.status_code == 413 and "MAX_JOB_BYTES" in resp.get_json()["error"]
    assert (stack.count("messages"), stack.count("sessions")) == before
    assert all(q["waiting"] == [] for q in client.get("/api/queue").get_json()["queues"])
    small = client.post("/api/chat", json={"model": MODEL, "stream": False, "options": SHORT,
                                           "messages": [{"role": "user", "content": "x" * 100}]})
    assert small.status_code == 200


def test_a_refused_turn_keeps_its_text_but_not_its_images(stack):
    sid, rid = str(uuid.uuid4()), str(uuid.uuid4())
    with stack.app.app_context():
        store.touch_session(sid, None)
        db.session.add(Message(session_id=sid, model=MODEL, role="user", content="look",
                               extra={"images": ["aGk="], "thinking": "t"}, request_id=rid,
                               part=0, seq=1, chain="c"))
        db.session.commit()
        store.fail_request(rid)
        row = db.session.execute(db.select(Message).where(Message.request_id == rid)).scalar_one()
        assert (row.status, row.content, row.extra) == ("failed", "look", {"thinking": "t"})


def test_model_listings_and_descriptions_are_kept_briefly(stack):
    app = stack.app_with({"MODEL_INFO_CACHE_SECONDS": 60})
    client = app.test_client()
    answers = app.extensions["model_answers"]
    tags = client.get("/api/tags")
    show = client.post("/api/show", json={"model": MODEL})
    assert tags.status_code == 200 and show.status_code == 200
    assert any(m["name"].startswith(MODEL.split(":")[0]) for m in tags.get_json()["models"])
    assert len(answers.kept) == 2
    # Asked again, the upstream is not: the kept answers are the same bytes.
    answers.kept = {k: (at, (status, kind, b"kept:" + body)) for k, (at, (status, kind, body))
                    in answers.kept.items()}
    assert client.get("/api/tags").data.startswith(b"kept:")
    assert client.post("/api/show", json={"model": MODEL}).data.startswith(b"kept:")
    # Another model's description is its own answer; an error is never kept.
    assert client.post("/api/show", json={"model": "no-such-model"}).status_code == 404
    assert len(answers.kept) == 2
    answers.forget()
    assert client.get("/api/tags").get_json()["models"]

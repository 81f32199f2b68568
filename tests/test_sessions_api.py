"""The session admin REST API against the real stack: sessions made by chatting through the
official ollama client, or by importing exports."""
import uuid

import ollama
import pytest
import requests

from tests.conftest import MODEL, OPTIONS

SHORT = {**OPTIONS, "num_predict": 4}
UNKNOWN = "6f1c7d3e-2b0a-4c7e-9a51-0d3f5e8b9c21"


def call(stack, method, path, **kwargs):
    return requests.request(method, stack.url + path, timeout=60, **kwargs)


def ok(resp, status=200):
    assert resp.status_code == status, resp.text
    return resp.json()


def imported(stack, threads, **fields):
    return ok(call(stack, "POST", "/api/sessions/import",
                   json={"version": 1, "threads": threads, **fields}), 201)["id"]


def tag():
    return "test-" + uuid.uuid4().hex[:8]  # a model name no other test uses


@pytest.fixture(scope="module")
def chatted(stack):
    """A session of two real turns."""
    sid = str(uuid.uuid4())
    client = ollama.Client(host=stack.url, headers={"X-Session-ID": sid})
    for question in ("What is 2+2?", "And 3+3?"):
        client.chat(MODEL, messages=[{"role": "user", "content": question}], options=SHORT,
                    stream=False)
    return sid


def test_chatted_session_is_listed_and_shown(stack, chatted):
    listed, page = [], 1
    while not any(s["id"] == chatted for s in listed):  # other tests' sessions share the db
        body = ok(call(stack, "GET", f"/api/sessions?model={MODEL}&per_page=100&page={page}"))
        assert body["sessions"], "chatted session not listed"
        listed, page = body["sessions"], page + 1
    item = next(s for s in listed if s["id"] == chatted)
    assert item["message_count"] == 4 and item["models"] == [MODEL] and not item["archived"]
    assert set(item) == {"id", "title", "created_at", "last_access", "archived",
                         "message_count", "models", "meta"}

    body = ok(call(stack, "GET", f"/api/sessions/{chatted}"))
    rows = stack.rows(chatted)
    assert body["id"] == chatted and body["total"] == 4
    assert [(m["id"], m["role"], m["content"], m["tokens"], m["status"], m["model"])
            for m in body["messages"]] == [
        (r.id, r.role, r.content, r.tokens, r.status, r.model) for r in rows]
    assert all(m["created_at"].endswith("Z") for m in body["messages"])


def test_list_pages_newest_first_and_filters(stack):
    model = tag()
    a, b, c = (imported(stack, {model: [{"role": "user", "content": f"hi {i}"}]})
               for i in range(3))
    ok(call(stack, "POST", f"/api/sessions/{b}/archive"))

    def ids(query):
        return [s["id"] for s in ok(call(stack, "GET", f"/api/sessions?model={model}&{query}"))
                ["sessions"]]

    first = ok(call(stack, "GET", f"/api/sessions?model={model}&per_page=2"))
    assert (first["total"], first["page"], first["per_page"]) == (3, 1, 2)
    assert [s["id"] for s in first["sessions"]] == [c, b]
    assert ids("per_page=2&page=2") == [a]
    assert ids("per_page=2&page=3") == []
    assert ids("archived=true") == [b]
    assert ids("archived=false") == [c, a]
    assert ok(call(stack, "GET", "/api/sessions?per_page=1000"))["per_page"] == 100


def test_show_pages_and_filters_messages(stack):
    m1, m2 = tag(), tag()
    call_ = {"function": {"name": "add", "arguments": {"a": 2, "b": 2}}}
    sid = imported(stack, {
        m1: [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
             {"role": "assistant", "content": "", "tool_calls": [call_]}],
        m2: [{"role": "user", "content": "look", "images": ["aGk="]},
             {"role": "assistant", "content": "a cat", "thinking": "fur", "status": "cancelled"}],
    })
    page1 = ok(call(stack, "GET", f"/api/sessions/{sid}?per_page=2"))
    page3 = ok(call(stack, "GET", f"/api/sessions/{sid}?per_page=2&page=3"))
    assert page1["total"] == 5 and len(page1["messages"]) == 2 and len(page3["messages"]) == 1
    assert page1["message_count"] == 5 and page1["models"] == sorted([m1, m2])
    only = ok(call(stack, "GET", f"/api/sessions/{sid}?model={m2}"))["messages"]
    assert [m["model"] for m in only] == [m2, m2]
    assert only[0]["images"] == ["aGk="]
    assert (only[1]["thinking"], only[1]["status"]) == ("fur", "cancelled")
    tool = ok(call(stack, "GET", f"/api/sessions/{sid}?model={m1}"))["messages"][2]
    assert tool["tool_calls"] == [call_]


def test_patch_title(stack):
    sid = imported(stack, {tag(): []})
    renamed = ok(call(stack, "PATCH", f"/api/sessions/{sid}", json={"title": "Sums"}))
    assert renamed["title"] == "Sums"
    assert ok(call(stack, "GET", f"/api/sessions/{sid}"))["title"] == "Sums"
    for body in ({"title": 5}, {"title": "x" * 201}, {}, {"title": "a", "meta": {}}):
        resp = call(stack, "PATCH", f"/api/sessions/{sid}", json=body)
        assert resp.status_code == 400 and resp.json()["error"], body
    resp = call(stack, "PATCH", f"/api/sessions/{sid}", data="not json")
    assert resp.status_code == 400 and "JSON object" in resp.json()["error"]
    assert ok(call(stack, "GET", f"/api/sessions/{sid}"))["title"] == "Sums"


def test_search_finds_titles_containing_the_words_in_any_case(stack):
    word = uuid.uuid4().hex[:10]
    hit = imported(stack, {tag(): []}, title=f"Notes on {word.upper()} 100%_done")
    miss = imported(stack, {tag(): []}, title="Something else")
    found = ok(call(stack, "GET", f"/api/sessions?q={word}"))
    assert [s["id"] for s in found["sessions"]] == [hit] and found["total"] == 1
    # LIKE's wildcards are plain characters.
    assert ok(call(stack, "GET", f"/api/sessions?q={word} 100%25_")).get("total") == 1
    assert ok(call(stack, "GET", "/api/sessions?q=%25&per_page=100"))["total"] < \
        ok(call(stack, "GET", "/api/sessions?per_page=1"))["total"]
    assert miss not in [s["id"] for s in found["sessions"]]
    ok(call(stack, "POST", f"/api/sessions/{hit}/archive"))
    assert ok(call(stack, "GET", f"/api/sessions?q={word}&archived=false"))["total"] == 0
    assert ok(call(stack, "GET", f"/api/sessions?q={word}&archived=true"))["total"] == 1
    resp = call(stack, "GET", "/api/sessions?q=" + "x" * 201)
    assert resp.status_code == 400 and "search" in resp.json()["error"]


def test_delete_removes_messages(stack):
    sid = imported(stack, {tag(): [{"role": "user", "content": "bye"}]})
    assert ok(call(stack, "DELETE", f"/api/sessions/{sid}")) == {"id": sid, "deleted": True,
                                                                "messages": 1}
    assert call(stack, "GET", f"/api/sessions/{sid}").status_code == 404
    assert stack.rows(sid) == []
    assert call(stack, "DELETE", f"/api/sessions/{sid}").status_code == 404


def test_archive_and_restore(stack):
    sid = imported(stack, {tag(): []})
    assert ok(call(stack, "POST", f"/api/sessions/{sid}/archive"))["archived"] is True
    assert ok(call(stack, "GET", f"/api/sessions/{sid}"))["archived"] is True
    assert ok(call(stack, "POST", f"/api/sessions/{sid}/restore"))["archived"] is False


def test_export_json_and_markdown(stack, chatted):
    doc = ok(call(stack, "GET", f"/api/sessions/{chatted}/export?format=json"))
    assert doc["version"] == 1 and doc["id"] == chatted and list(doc["threads"]) == [MODEL]
    assert [(m["role"], m["content"]) for m in doc["threads"][MODEL]] == [
        (r.role, r.content) for r in stack.rows(chatted)]
    md = call(stack, "GET", f"/api/sessions/{chatted}/export?format=markdown")
    assert md.status_code == 200 and md.headers["Content-Type"].startswith("text/markdown")
    assert f"## {MODEL}" in md.text and "**user**: What is 2+2?" in md.text
    assert md.text.count("**assistant**:") == 2
    assert call(stack, "GET", f"/api/sessions/{chatted}/export?format=pdf").status_code == 400


def test_import_round_trip_continues_like_the_original(stack, chatted):
    doc = ok(call(stack, "GET", f"/api/sessions/{chatted}/export"))
    del doc["id"]
    made = ok(call(stack, "POST", "/api/sessions/import", json=doc), 201)
    assert made["messages"] == 4 and made["id"] != chatted
    copy = ok(call(stack, "GET", f"/api/sessions/{made['id']}/export"))

    def same(d):
        return {model: [(m["role"], m["content"], m["tokens"], m["status"]) for m in ms]
                for model, ms in d["threads"].items()}
    assert same(copy) == same(doc)
    # A stateless client resending the whole conversation to the copy adds only its question.
    history = [{"role": m["role"], "content": m["content"]} for m in doc["threads"][MODEL]]
    client = ollama.Client(host=stack.url, headers={"X-Session-ID": made["id"]})
    client.chat(MODEL, messages=history + [{"role": "user", "content": "Thanks"}], options=SHORT,
                stream=False)
    assert len(stack.rows(made["id"])) == 6


def test_import_keeps_a_given_id_and_refuses_a_taken_one(stack):
    sid = str(uuid.uuid4())
    assert imported(stack, {tag(): []}, id=sid) == sid
    resp = call(stack, "POST", "/api/sessions/import",
                json={"version": 1, "id": sid, "threads": {}})
    assert resp.status_code == 409 and "already exists" in resp.json()["error"]


@pytest.mark.parametrize("body, error", [
    ([1, 2], "JSON object"),
    ({"version": 2, "threads": {}}, "version"),
    ({"threads": []}, "threads"),
    ({"threads": {"m": {"role": "user"}}}, "list"),
    ({"threads": {"m": ["hi"]}}, "must be an object"),
    ({"threads": {"m": [{"role": "robot", "content": "x"}]}}, "role"),
    ({"threads": {"m": [{"role": "user", "content": 5}]}}, "content"),
    ({"threads": {"m": [{"role": "user", "content": "x", "status": "maybe"}]}}, "status"),
    ({"threads": {"m": [{"role": "user", "content": "x", "images": "aGk="}]}}, "images"),
    ({"id": "not-a-uuid", "threads": {}}, "UUID"),
    ({"title": "x" * 201, "threads": {}}, "title"),
    ({"created_at": "yesterday", "threads": {}}, "created_at"),
])
def test_import_refuses_bad_bodies(stack, body, error):
    before = stack.count("sessions")
    resp = call(stack, "POST", "/api/sessions/import", json=body)
    assert resp.status_code == 400 and error in resp.json()["error"]
    assert stack.count("sessions") == before  # nothing half-imported


def test_import_refuses_non_json(stack):
    resp = call(stack, "POST", "/api/sessions/import", data="{nope")
    assert resp.status_code == 400
    assert resp.json() == {"error": "request body must be a JSON object"}


@pytest.mark.parametrize("method, suffix", [
    ("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/export"), ("POST", "/archive"),
    ("POST", "/restore"),
])
def test_unknown_and_malformed_ids(stack, method, suffix):
    kwargs = {"json": {"title": "t"}} if method == "PATCH" else {}
    missing = call(stack, method, f"/api/sessions/{UNKNOWN}{suffix}", **kwargs)
    assert missing.status_code == 404 and missing.json() == {
        "error": f"session '{UNKNOWN}' not found"}
    bad = call(stack, method, f"/api/sessions/nope{suffix}", **kwargs)
    assert bad.status_code == 400 and "must be a UUID" in bad.json()["error"]


@pytest.mark.parametrize("query", ["page=0", "per_page=abc", "archived=maybe"])
def test_bad_paging_and_filters(stack, query):
    resp = call(stack, "GET", f"/api/sessions?{query}")
    assert resp.status_code == 400 and resp.json()["error"]

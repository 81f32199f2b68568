"""Edits and regenerations become branches (#27): a stateless client that resends the whole
conversation with an earlier message changed, or without the last reply, starts a branch
where it differs instead of storing everything again; the model sees only the branch's path;
the sessions API shows siblings and switches the active branch; exports carry the tree.
Through raw HTTP, the ollama library and the OpenAI SDK, against the bundled engine."""
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import ollama
import openai
import requests

from tests.conftest import MODEL

OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 6}


def chat(url, sid, messages):
    resp = requests.post(url + "/api/chat", timeout=120, json={
        "model": MODEL, "stream": False, "options": OPTIONS, "session_id": sid,
        "messages": messages})
    assert resp.status_code == 200, resp.text
    return resp.json()


def said(reply):
    return {"role": "assistant", "content": reply["message"]["content"]}


def shown(url, sid):
    return requests.get(f"{url}/api/sessions/{sid}?per_page=100", timeout=30).json()["messages"]


def path(url, sid):
    """The active path (turns kept aside, cancelled or failed, are shown too, but not on it)."""
    return [(m["role"], m["content"]) for m in shown(url, sid) if m["status"] == "ok"]


def fresh_prompt_count(url, messages):
    """What the model counts for these messages sent at once to a new session."""
    return chat(url, str(uuid.uuid4()), messages)["prompt_eval_count"]


def test_an_edit_and_a_regenerate_start_branches_and_store_no_duplicate(stack):
    url, sid = stack.url, str(uuid.uuid4())
    u1 = {"role": "user", "content": "Name a colour."}
    a1 = said(chat(url, sid, [u1]))
    u2 = {"role": "user", "content": "Name a fruit."}
    a2 = said(chat(url, sid, [u1, a1, u2]))
    assert len(stack.rows(sid)) == 4  # the resend extended the thread
    # An edit of message 3: a branch at 3, the old 3 and 4 aside, nothing stored twice.
    u2b = {"role": "user", "content": "Name an animal."}
    edited = chat(url, sid, [u1, a1, u2b])
    a2b = said(edited)
    assert path(url, sid) == [(m["role"], m["content"]) for m in (u1, a1, u2b, a2b)]
    assert len(stack.rows(sid)) == 6
    # The model saw only the branch's path: as many prompt tokens as a new session's.
    assert edited["prompt_eval_count"] == fresh_prompt_count(url, [u1, a1, u2b])
    messages = shown(url, sid)
    third = messages[2]
    assert third["siblings"]["count"] == 2 and third["siblings"]["ids"][1] == third["id"]
    assert "siblings" not in messages[0] and "siblings" not in messages[3]
    # A regenerate (the same conversation without the last reply): a sibling of that reply.
    regenerated = chat(url, sid, [u1, a1, u2b])
    assert regenerated["prompt_eval_count"] == edited["prompt_eval_count"]
    assert len(stack.rows(sid)) == 7
    fourth = shown(url, sid)[3]
    assert fourth["siblings"]["count"] == 2 and fourth["content"] == regenerated["message"]["content"]
    # Switching back to the first branch: its path is the thread again, and the next turn
    # (a client that sends only its new message) continues it.
    old_third = third["siblings"]["ids"][0]
    switched = requests.post(f"{url}/api/sessions/{sid}/branch", json={"message_id": old_third},
                             timeout=30)
    assert switched.status_code == 200, switched.text
    assert path(url, sid) == [(m["role"], m["content"]) for m in (u1, a1, u2, a2)]
    u3 = {"role": "user", "content": "And a city?"}
    after = chat(url, sid, [u3])
    assert after["prompt_eval_count"] == fresh_prompt_count(url, [u1, a1, u2, a2, u3])
    assert len(shown(url, sid)) == 6 and len(stack.rows(sid)) == 9
    # Bad switches.
    assert requests.post(f"{url}/api/sessions/{sid}/branch", json={"message_id": 2 ** 30},
                         timeout=30).status_code == 404
    assert requests.post(f"{url}/api/sessions/{sid}/branch", json={"message_id": "x"},
                         timeout=30).status_code == 400

    # The export carries the tree, and an import restores it as it was.
    export = requests.get(f"{url}/api/sessions/{sid}/export", timeout=30).json()
    thread = export["threads"][MODEL]
    assert [m.get("active", True) for m in thread].count(False) == 3
    copy = requests.post(f"{url}/api/sessions/import", json={**export, "id": None}, timeout=30)
    assert copy.status_code == 201, copy.text
    assert path(url, copy.json()["id"]) == path(url, sid)
    assert [m.get("siblings", {}).get("count") for m in shown(url, copy.json()["id"])] == \
        [m.get("siblings", {}).get("count") for m in shown(url, sid)]
    broken = {**export, "id": None, "threads": {MODEL: [{**thread[0], "parent": 5}] + thread[1:]}}
    assert requests.post(f"{url}/api/sessions/import", json=broken, timeout=30).status_code == 400


def test_real_clients_edit_and_regenerate_without_duplicates(stack):
    url = stack.url
    sid = str(uuid.uuid4())
    client = ollama.Client(host=url, headers={"X-Session-ID": sid})
    history = [{"role": "user", "content": "Say one word."}]
    first = client.chat(model=MODEL, messages=history, options=OPTIONS).message
    history += [{"role": "assistant", "content": first.content},
                {"role": "user", "content": "Another word."}]
    client.chat(model=MODEL, messages=history, options=OPTIONS)
    again = client.chat(model=MODEL, messages=history, options=OPTIONS)  # regenerate
    assert len(stack.rows(sid)) == 5 and len(shown(url, sid)) == 4
    assert shown(url, sid)[3]["content"] == again.message.content

    sid = str(uuid.uuid4())
    sdk = openai.OpenAI(base_url=url + "/v1", api_key="none",
                        default_headers={"X-Session-ID": sid})
    ask = lambda messages: sdk.chat.completions.create(  # noqa: E731
        model=MODEL, messages=messages, temperature=0, seed=42, max_tokens=6)
    one = ask([{"role": "user", "content": "Say one word."}]).choices[0].message.content
    ask([{"role": "user", "content": "Say one word."}, {"role": "assistant", "content": one},
         {"role": "user", "content": "Another word."}])
    ask([{"role": "user", "content": "Say one word."}, {"role": "assistant", "content": one},
         {"role": "user", "content": "A third word."}])  # an edit
    assert len(stack.rows(sid)) == 6
    assert [m["content"] for m in shown(url, sid)][:3] == ["Say one word.", one, "A third word."]


# --- retries ------------------------------------------------------------------------------

LONG = {"temperature": 0, "seed": 42, "num_predict": 60}


def send(url, sid, messages, rid=None, stream=False, options=LONG):
    headers = {"X-Request-ID": rid} if rid else {}
    return requests.post(url + "/api/chat", timeout=120, headers=headers, stream=stream, json={
        "model": MODEL, "stream": stream, "options": options, "session_id": sid,
        "messages": messages})


def test_a_retry_joins_the_first_request_and_stores_one_turn(stack):
    """Sent again with the same X-Request-ID, or the same conversation again while the first
    still runs: the client gets the first one's reply, and one turn is stored."""
    url = stack.url
    for named in (True, False):
        sid, rid = str(uuid.uuid4()), str(uuid.uuid4())
        messages = [{"role": "user", "content": "Tell me about the sea."}]
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(send, url, sid, messages, rid)
            time.sleep(0.3)  # the first is in line or running
            again = pool.submit(send, url, sid, messages, rid if named else None)
            first, again = first.result(), again.result()
        assert first.status_code == again.status_code == 200
        assert again.headers["X-Request-ID"] == first.headers["X-Request-ID"] == rid
        assert again.json()["message"] == first.json()["message"]
        assert [(r.role, r.status) for r in stack.rows(sid)] == [("user", "ok"),
                                                                  ("assistant", "ok")]
    # Named again once it is done, while its events are kept: answered again, nothing stored.
    late = send(url, sid, messages, rid)
    assert late.headers["X-Request-ID"] == rid and late.json()["message"] == first.json()["message"]
    assert len(stack.rows(sid)) == 2


def test_a_retry_after_the_first_was_cut_off_stores_one_turn(stack):
    """The client's connection dropped mid-reply (the request was cancelled, its partial reply
    kept aside); it sends the same conversation again: the question is not stored twice, and
    this reply is kept."""
    url, sid = stack.url, str(uuid.uuid4())
    messages = [{"role": "user", "content": "Tell me about the mountains."}]
    cut = send(url, sid, messages, stream=True, options={**LONG, "num_predict": 400})
    next(cut.iter_lines())
    cut.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(r.status == "cancelled"
                                                  for r in stack.rows(sid)):
        time.sleep(0.1)
    retried = send(url, sid, messages)
    assert retried.status_code == 200
    assert path(url, sid) == [("user", messages[0]["content"]),
                              ("assistant", retried.json()["message"]["content"])]
    assert [r.status for r in stack.rows(sid)] == ["ok", "cancelled", "ok"]

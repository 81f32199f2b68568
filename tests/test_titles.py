"""AUTO_TITLES (#27 part 3): after a session's first reply, a title asked of the model while
nobody waits, never over a title a user set, told over SSE. A worker of its own, titles on."""
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from chatbot.ops import procs
from chatbot.flow.title import ASK, cleaned
from chatbot.store import ChatSession, db, open_session, set_title_if_unset
from tests.conftest import MODEL, own_stack
from tests.test_summary import Tap

OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 8}


def titling_stack(engine_url, tmp_path, logs_dir):
    return own_stack(engine_url, tmp_path, logs_dir, "titles", AUTO_TITLES="true")


def chat(url, sid, content, rid=None):
    return requests.post(url + "/api/chat", timeout=120, headers={"X-Request-ID": rid or
                                                                  str(uuid.uuid4())},
                         json={"model": MODEL, "stream": False, "options": OPTIONS,
                               "session_id": sid,
                               "messages": [{"role": "user", "content": content}]})


def title(url, sid):
    return requests.get(f"{url}/api/sessions/{sid}?per_page=1", timeout=30).json()["title"]


def test_an_api_session_names_itself_and_a_users_title_stays(engine_url, tmp_path, logs_dir):
    with titling_stack(engine_url, tmp_path, logs_dir) as (app, url):
        sid, rid = str(uuid.uuid4()), str(uuid.uuid4())
        events = requests.get(f"{url}/api/events?channel={rid}", stream=True, timeout=60)
        heard = []

        def listen():
            kind = None
            for line in events.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind == "title":
                    heard.append(json.loads(line.split(":", 1)[1]))
                    return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        assert chat(url, sid, "How do I bake sourdough bread at home?", rid).status_code == 200
        procs.wait_until(lambda: title(url, sid), 30, what="the title")
        named = title(url, sid)
        assert 0 < len(named) <= 60 and "\n" not in named
        listener.join(10)
        events.close()
        assert heard == [{"session_id": sid, "title": named}]
        # Later turns leave it alone.
        assert chat(url, sid, "And how long should it rise?").status_code == 200
        time.sleep(1)
        assert title(url, sid) == named
        # A title the user set first is never replaced.
        mine = str(uuid.uuid4())
        requests.post(f"{url}/api/sessions/import", timeout=30,
                      json={"id": mine, "title": "My own title", "threads": {}})
        assert chat(url, mine, "What is the capital of France?").status_code == 200
        time.sleep(2)
        assert title(url, mine) == "My own title"


def test_titles_wait_until_the_worker_has_nothing_to_run(engine_url, tmp_path, logs_dir):
    """A title is owed until the worker's line is empty: two new sessions' first turns sent at
    once are both answered before the model is asked for either title (one that waited was
    not named at all before), and then both are named."""
    tap = Tap(engine_url)
    try:
        with own_stack(tap.url, tmp_path, logs_dir, "titles-owed", AUTO_TITLES="true") as (_, url):
            sids = [str(uuid.uuid4()) for _ in range(2)]
            with ThreadPoolExecutor(2) as pool:
                replies = list(pool.map(lambda sid: chat(url, sid, "How do I bake bread?"), sids))
            assert [r.status_code for r in replies] == [200, 200]
            procs.wait_until(lambda: all(title(url, sid) for sid in sids), 60, what="the titles")
            chats = [body for path, body in tap.seen if path == "/api/chat"]
            assert [body["messages"][0]["content"] == ASK for body in chats] == [
                False, False, True, True]
    finally:
        tap.server.shutdown()


def test_a_title_is_set_once_through_the_turns_connection(stack):
    """The worker names a session through the plain Connection its turn wrote through; a
    session named meanwhile (by its user) keeps its name."""
    with stack.app.app_context():
        sid = str(uuid.uuid4())
        open_session(sid)
        with db.engine.connect() as conn:
            assert set_title_if_unset(sid, "First", conn)
            assert not set_title_if_unset(sid, "Second", conn)
        db.session.expire_all()
        assert db.session.get(ChatSession, sid).title == "First"


def test_a_title_is_cleaned_to_one_short_line():
    assert cleaned('"Baking Sourdough Bread."\nMore text') == "Baking Sourdough Bread"
    assert cleaned("**Title:** Sea stories") == "Sea stories"
    assert len(cleaned("word " * 40)) == 60

"""Search in what was said (#27): GET /api/sessions?q= and `flask sessions search` find a word
said in the middle of a long session, with a snippet, on SQLite and PostgreSQL, and never
another key's session."""
import uuid

import pytest
import requests

from chatbot import create_app, store
from chatbot.store import admin, transfer
from tests.conftest import MODEL, serve

A, B = "key-alice-0123456789", "key-bob-0123456789"


def long_session(word):
    """An export of 200 messages with `word` said once, in message 117."""
    said = [{"role": "user" if i % 2 == 0 else "assistant",
             "content": f"Message {i} about the weather and the garden."} for i in range(200)]
    said[117]["content"] = f"The ferry to the island is called the {word} and leaves at noon."
    return {"threads": {MODEL: said}, "title": "A long talk"}


@pytest.fixture(scope="module")
def keyed(stack):
    app = stack.app_with({"API_KEYS": f"alice={A},bob={B}"})
    server, url = serve(app)
    yield app, url
    server.shutdown()


def test_a_word_said_in_a_long_session_is_found_with_a_snippet(keyed):
    app, url = keyed
    word = f"Zephyrine{uuid.uuid4().hex[:6]}"
    alice, bob = ({"Authorization": f"Bearer {k}"} for k in (A, B))
    made = requests.post(url + "/api/sessions/import", json=long_session(word), headers=alice,
                         timeout=60)
    assert made.status_code == 201
    sid = made.json()["id"]
    found = requests.get(url + "/api/sessions", params={"q": word.lower()}, headers=alice,
                         timeout=30).json()
    assert [s["id"] for s in found["sessions"]] == [sid]
    match = found["sessions"][0]["match"]
    assert f"[{word}]" in match["snippet"] and "ferry" in match["snippet"]
    shown = requests.get(f"{url}/api/sessions/{sid}?per_page=100&page=2", headers=alice,
                         timeout=30).json()["messages"]
    assert any(m["id"] == match["message_id"] and word in m["content"] for m in shown)
    # Two words, in any order; a word not said finds nothing; the title still counts.
    assert requests.get(url + "/api/sessions", params={"q": f"island {word}"}, headers=alice,
                        timeout=30).json()["total"] == 1
    assert requests.get(url + "/api/sessions", params={"q": f"{word} volcano"}, headers=alice,
                        timeout=30).json()["total"] == 0
    # Quotes and FTS syntax are just words.
    assert requests.get(url + "/api/sessions", params={"q": f'"{word}" OR * NEAR('},
                        headers=alice, timeout=30).status_code == 200
    # Another key finds nothing of it.
    assert requests.get(url + "/api/sessions", params={"q": word}, headers=bob,
                        timeout=30).json()["total"] == 0
    # From a terminal.
    out = app.test_cli_runner().invoke(args=["sessions", "search", word, "--json"])
    assert out.exit_code == 0 and sid in out.output


def test_postgresql_searches_with_its_own_full_text_index(postgres_url, stack):
    app = create_app({"REDIS_URL": stack.env["REDIS_URL"], "OLLAMA_HOST": stack.env["OLLAMA_HOST"],
                      "SQLALCHEMY_DATABASE_URI": postgres_url})
    word = f"Zephyrine{uuid.uuid4().hex[:6]}"
    with app.app_context():
        store.upgrade()
        mine = transfer.import_session(long_session(word), owner="alice")["id"]
        transfer.import_session(long_session(word), owner="bob")
        found = admin.list_sessions(search=word, visible_to="alice")
        assert [s["id"] for s in found["sessions"]] == [mine]
        assert f"[{word}]" in found["sessions"][0]["match"]["snippet"]
        assert admin.list_sessions(search=f"{word} volcano")["total"] == 0
        assert admin.list_sessions(search=word)["total"] == 2
        store.db.session.remove()
        store.db.engine.dispose()

"""How long a request keeps its model loaded (chatbot.api.residency), read back from the
bundled engine's /api/ps: KEEP_ALIVE_MAX and KEEP_ALIVE_MIN bound every key's keep_alive,
forever and unload-now are the admins', PINNED_MODELS stay loaded whatever a request says."""
from datetime import datetime, timezone

import pytest
import requests

from tests.conftest import MODEL, serve
from tests.test_keys import A, ROOT, bearer

SHORT = {"temperature": 0, "seed": 42, "num_predict": 1}


@pytest.fixture(scope="module")
def bounded(stack, engine_url):
    app = stack.app_with({"API_KEYS": f"alice={A}", "ADMIN_API_KEYS": f"root={ROOT}",
                          "KEEP_ALIVE_MIN": 30.0, "KEEP_ALIVE_MAX": 600.0})
    server, url = serve(app)
    yield url
    # As the engine keeps models by default (forever), for the tests after these.
    chat(url, ROOT, -1)
    server.shutdown()


def chat(url, key, keep_alive):
    resp = requests.post(url + "/api/chat", headers=bearer(key), timeout=120, json={
        "model": MODEL, "stream": False, "options": SHORT, "keep_alive": keep_alive,
        "messages": [{"role": "user", "content": "Hi"}]})
    assert resp.status_code == 200, resp.text
    return resp


def kept_for(engine_url):
    """Seconds until the engine unloads the model (None: it is not loaded)."""
    for model in requests.get(engine_url + "/api/ps", timeout=10).json()["models"]:
        if model["name"] == MODEL:
            until = datetime.fromisoformat(model["expires_at"].replace("Z", "+00:00"))
            return (until - datetime.now(timezone.utc)).total_seconds()
    return None


def test_a_keys_forever_is_clamped_and_an_admins_is_not(bounded, engine_url):
    chat(bounded, A, -1)
    assert 500 < kept_for(engine_url) <= 600  # KEEP_ALIVE_MAX
    chat(bounded, A, "2h")
    assert 500 < kept_for(engine_url) <= 600
    chat(bounded, ROOT, -1)
    assert kept_for(engine_url) > 3600 * 24 * 365  # an admin may pin it


def test_a_key_cannot_unload_a_model_others_use(bounded, engine_url):
    chat(bounded, A, 0)
    assert 20 < kept_for(engine_url) <= 30  # KEEP_ALIVE_MIN: still loaded
    chat(bounded, A, "1s")
    assert 20 < kept_for(engine_url) <= 30


def test_pinned_models_stay_loaded_whatever_a_request_says(stack, engine_url):
    server, url = serve(stack.app_with({"PINNED_MODELS": MODEL}))
    try:
        chat(url, None, "1s")
        assert kept_for(engine_url) > 3600 * 24 * 365
    finally:
        server.shutdown()


def test_a_bad_keep_alive_is_refused_before_it_is_queued(bounded):
    resp = requests.post(bounded + "/api/chat", headers=bearer(A), timeout=30, json={
        "model": MODEL, "keep_alive": "soon", "messages": [{"role": "user", "content": "Hi"}]})
    assert resp.status_code == 400 and "invalid duration" in resp.json()["error"]

"""How long a request keeps its model loaded (chatbot.api.residency), read back from the
bundled engine's /api/ps: KEEP_ALIVE_MAX and KEEP_ALIVE_MIN bound every key's keep_alive,
forever and unload-now are the admins', PINNED_MODELS stay loaded whatever a request says;
PRELOAD_MODELS are loaded at start, and /api/ps shows what waits for a load."""
import threading
from datetime import datetime, timezone

import pytest
import requests

from chatbot.ops import procs
from chatbot.redis_keys import STARTED
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


def unload(engine_url, model=MODEL):
    requests.post(engine_url + "/api/generate", json={"model": model, "keep_alive": 0},
                  timeout=60).raise_for_status()
    assert kept_for(engine_url) is None


def keep(engine_url):
    """Loaded for good again, as the engine keeps models by default (for the tests after)."""
    requests.post(engine_url + "/api/generate", json={"model": MODEL, "keep_alive": -1},
                  timeout=120).raise_for_status()


def test_preloaded_models_are_loaded_when_the_maintenance_worker_starts(stack, engine_url,
                                                                         logs):
    unload(engine_url)
    worker = procs.start_worker({**stack.env, "PRELOAD_MODELS": MODEL}, queues="maintenance",
                                log=logs / "preload-worker.log")
    try:
        procs.wait_until(lambda: kept_for(engine_url) is not None, 60, worker, "preload")
        assert kept_for(engine_url) > 0
    finally:
        procs.stop(worker)
        keep(engine_url)


def test_pinned_models_are_loaded_again_only_while_their_host_is_idle(stack, engine_url):
    from chatbot.worker.tasks import keep_models_loaded

    app = stack.app_with({"PINNED_MODELS": frozenset([MODEL])})
    unload(engine_url)
    try:
        with app.app_context():
            line, queue = app.extensions["line"], "ollama"
            line.redis.sadd(STARTED.format(queue), "busy-request")  # a request running
            try:
                assert keep_models_loaded.run() == []
            finally:
                line.redis.srem(STARTED.format(queue), "busy-request")
            assert kept_for(engine_url) is None  # never ahead of a request
            assert keep_models_loaded.run() == [(engine_url, MODEL)]
        assert kept_for(engine_url) > 3600 * 24 * 365  # pinned: forever
    finally:
        keep(engine_url)


def test_api_ps_shows_the_models_requests_wait_to_load(stack, engine_url):
    # Two names for the engine: two lines, and no worker reads either, so requests wait.
    hosts = [engine_url, engine_url.replace("127.0.0.1", "localhost")]
    app = stack.app_with({"OLLAMA_HOSTS": hosts})
    server, url = serve(app)
    unload(engine_url)
    waiting = threading.Thread(target=lambda: requests.post(url + "/api/chat", timeout=8, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}), daemon=True)
    try:
        assert "queued" not in requests.get(url + "/api/ps", timeout=10).json()
        waiting.start()
        procs.wait_until(lambda: "queued" in requests.get(url + "/api/ps", timeout=10).json(),
                         10, None, "a queued load")
        answer = requests.get(url + "/api/ps", timeout=10).json()
        assert answer["queued"] == [{"name": MODEL, "model": MODEL, "requests": 1}]
        assert MODEL not in [m["name"] for m in answer["models"]]
        keep(engine_url)  # loaded now: what waits for it needs no load
        assert "queued" not in requests.get(url + "/api/ps", timeout=10).json()
    finally:
        keep(engine_url)
        waiting.join(10)
        server.shutdown()

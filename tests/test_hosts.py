"""Several Ollama hosts: a queue and a worker per host; model-aware, shortest-queue routing;
sessions stick to their host while it is healthy; hosts that don't answer are skipped."""
import threading
import uuid

import pytest
import requests

from chatbot import create_app
from chatbot.ops import procs
from tests.conftest import MODEL, serve

SHORT = {"temperature": 0, "seed": 42, "num_predict": 2}
LONG = {"temperature": 0, "seed": 42, "num_predict": 300}
ONLY_ON_SECOND = "second-only"


@pytest.fixture(scope="module")
def second_engine(tmp_path_factory, logs):
    from chatbot.engine.models import default_model_path

    folder = tmp_path_factory.mktemp("second-models")
    (folder / f"{ONLY_ON_SECOND}.gguf").symlink_to(default_model_path())
    proc, url = procs.start_engine(procs.free_port(), log=logs / "engine2.log",
                                   env={"CHATBOT_ENGINE_MODELS": str(folder)})
    yield url
    procs.stop(proc)


@pytest.fixture(scope="module")
def hosts(stack, engine_url, second_engine, logs):
    dead = f"http://127.0.0.1:{procs.free_port()}"
    config = {"REDIS_URL": stack.env["REDIS_URL"], "SQLALCHEMY_DATABASE_URI": stack.env["DATABASE_URL"],
              "OLLAMA_HOSTS": [engine_url, second_engine, dead]}
    app = create_app(config)
    env = {**stack.env, "OLLAMA_HOSTS": ",".join(config["OLLAMA_HOSTS"])}
    workers = [procs.start_worker(env, queues=q, log=logs / f"worker-{q}.log")
               for q in ("ollama-1", "ollama-2", "ollama-3")]
    server, url = serve(app)
    yield url, app.extensions["router"]
    server.shutdown()
    for worker in workers:
        procs.stop(worker)


def chat(url, session_id, options=SHORT, model=MODEL, request_id=None):
    headers = {"X-Session-ID": session_id, **({"X-Request-ID": request_id} if request_id else {})}
    return requests.post(url + "/api/chat", json={"model": model, "stream": False, "options": options,
                                                  "messages": [{"role": "user", "content": "Hi"}]},
                         headers=headers, timeout=120)


def host_of(url, request_id):
    return requests.get(f"{url}/api/queue/{request_id}", timeout=5).json()["host"]


def test_each_host_has_its_own_queue(hosts):
    url, router = hosts
    queues = [q["queue"] for q in requests.get(url + "/api/queue", timeout=5).json()["queues"]]
    assert queues == ["ollama-1", "ollama-2", "ollama-3"] == list(router.queues.values())


def test_busy_host_is_passed_over_and_dead_host_skipped(hosts):
    url, router = hosts
    first_id, second_id = f"a-{uuid.uuid4()}", f"b-{uuid.uuid4()}"
    busy = threading.Thread(target=chat, args=(url, str(uuid.uuid4()), LONG, MODEL, first_id))
    busy.start()
    try:
        procs.wait_until(lambda: requests.get(f"{url}/api/queue/{first_id}", timeout=5).json()
                         .get("state") == "running", 30, what="first request running")
        assert chat(url, str(uuid.uuid4()), request_id=second_id).status_code == 200
        used = {host_of(url, first_id), host_of(url, second_id)}
        assert used == set(router.hosts[:2])  # both live hosts, never the dead one
    finally:
        busy.join(120)


def test_model_only_one_host_has_goes_there(hosts):
    url, router = hosts
    rid = f"c-{uuid.uuid4()}"
    assert chat(url, str(uuid.uuid4()), model=ONLY_ON_SECOND, request_id=rid).status_code == 200
    assert host_of(url, rid) == router.hosts[1]


def test_session_sticks_to_its_host(hosts):
    url, router = hosts
    session = str(uuid.uuid4())
    first = f"d-{uuid.uuid4()}"
    chat(url, session, request_id=first)
    home = host_of(url, first)
    for _ in range(3):
        rid = f"e-{uuid.uuid4()}"
        assert chat(url, session, request_id=rid).status_code == 200
        assert host_of(url, rid) == home


def test_unknown_model_on_every_host_is_404(hosts):
    url, _ = hosts
    resp = chat(url, str(uuid.uuid4()), model="nowhere:1b")
    assert resp.status_code == 404 and resp.json()["error"] == "model 'nowhere:1b' not found"


def test_listings_merge_every_live_host_and_model_requests_find_their_host(hosts):
    url, _ = hosts
    names = [m["name"] for m in requests.get(url + "/api/tags", timeout=10).json()["models"]]
    assert MODEL in names and ONLY_ON_SECOND in names and len(names) == len(set(names))
    show = requests.post(url + "/api/show", json={"model": ONLY_ON_SECOND}, timeout=30)
    assert show.status_code == 200 and "general.architecture" in show.json()["model_info"]
    embed = requests.post(url + "/api/embed", json={"model": ONLY_ON_SECOND, "input": "hi"},
                          timeout=60)
    assert embed.status_code == 200 and embed.json()["embeddings"]
    openai_ids = [m["id"] for m in requests.get(url + "/v1/models", timeout=10).json()["data"]]
    assert ONLY_ON_SECOND in openai_ids
    missing = requests.post(url + "/api/show", json={"model": "nowhere:1b"}, timeout=10)
    assert missing.status_code == 404

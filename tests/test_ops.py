"""Operations: request ids in web and worker logs, /metrics, /healthz and /readyz, retries,
the compose file and the image's entrypoint outside Docker."""
import io
import json
import logging
import sqlite3
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import ollama
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chatbot import create_app
from chatbot.ops import logs, procs
from chatbot.upstream import Upstream, UpstreamError
from tests.conftest import MODEL, serve

SHORT = {"temperature": 0, "seed": 42, "num_predict": 4}
DOCKER = procs.PROJECT_ROOT / "docker"


def chat(url, request_id=None, stream=False):
    headers = {"X-Request-ID": request_id} if request_id else {}
    return requests.post(url + "/api/chat", headers=headers, timeout=120, json={
        "model": MODEL, "stream": stream, "options": SHORT,
        "messages": [{"role": "user", "content": "What is 2+2?"}]})


def test_request_id_is_in_web_and_worker_log_lines(stack, logs_dir):
    captured = io.StringIO()
    logs.configure("INFO", "json", stream=captured)
    rid = f"trace-{uuid.uuid4()}"
    resp = chat(stack.url, rid)
    assert resp.headers["X-Request-ID"] == rid
    web = [json.loads(line) for line in captured.getvalue().splitlines() if rid in line]
    assert web and all(entry["request_id"] == rid for entry in web)
    assert any(entry.get("session_id") and entry.get("model") == MODEL and
               entry.get("queue_position") for entry in web)

    def worker_lines():
        lines = (logs_dir / "worker.log").read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and rid in line]

    procs.wait_until(lambda: any("finished" in e["message"] for e in worker_lines()), 10,
                     what="the worker's log line")
    entries = worker_lines()
    assert {e["request_id"] for e in entries} == {rid}
    assert any(e.get("tokens") for e in entries) and all(e["level"] for e in entries)


def test_text_log_format_is_plain():
    captured = io.StringIO()
    logs.configure("INFO", "text", stream=captured)
    logs.clear()  # what earlier in-process requests left in this thread's context
    logs.bind(request_id="abc12345")
    logging.getLogger("chatbot.test").info("hello")
    logs.clear()
    logs.configure("INFO", "json")
    assert captured.getvalue().strip().endswith("hello [request_id=abc12345]")


def scrape(url):
    families = text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def total(samples, name, **labels):
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def test_metrics_move_by_the_right_amounts(stack):
    before = scrape(stack.url)
    with ThreadPoolExecutor(3) as pool:  # three at once: two of them wait in line
        replies = list(pool.map(lambda _: chat(stack.url), range(3)))
    streamed = chat(stack.url, stream=True)
    eval_counts = [r.json()["eval_count"] for r in replies]
    eval_counts.append(json.loads(streamed.text.strip().splitlines()[-1])["eval_count"])
    time.sleep(0.3)  # a request is counted when its body has been sent
    after = scrape(stack.url)
    moved = lambda name, **labels: total(after, name, **labels) - total(before, name, **labels)  # noqa: E731
    assert moved("chatbot_requests_total", endpoint="/api/chat", model=MODEL, status="200") == 4
    assert moved("chatbot_tokens_generated_total", model=MODEL) == sum(eval_counts)
    assert moved("chatbot_queue_wait_seconds_count", queue="ollama") == 4
    assert moved("chatbot_queue_wait_seconds_sum", queue="ollama") > 0
    assert moved("chatbot_time_to_first_token_seconds_count") == 4
    prompt_evals = [r.json()["prompt_eval_duration"] for r in replies]
    assert moved("chatbot_prompt_eval_seconds_count", model=MODEL, pick="fair") == 4
    assert moved("chatbot_prompt_eval_seconds_sum", model=MODEL) >= sum(prompt_evals) / 1e9
    assert moved("chatbot_proxy_overhead_seconds_count") == 4
    assert moved("chatbot_request_duration_seconds_count", endpoint="/api/chat") == 4
    assert ("chatbot_queue_depth", (("queue", "ollama"),)) in after
    assert total(after, "chatbot_active_sessions") >= 4


def test_readyz_names_redis_when_it_stops_and_recovers(engine_url, tmp_path, logs_dir):
    port = procs.free_port()
    redis_proc, redis_url = procs.start_redis(port)
    env = {"REDIS_URL": redis_url, "OLLAMA_HOST": engine_url,
           "DATABASE_URL": f"sqlite:///{tmp_path / 'ready.db'}"}
    app = create_app({"REDIS_URL": redis_url, "OLLAMA_HOST": engine_url,
                      "SQLALCHEMY_DATABASE_URI": env["DATABASE_URL"]})
    worker = procs.start_worker(env, queues="ollama", log=logs_dir / "ready-worker.log")
    server, url = serve(app)
    ready = lambda: requests.get(url + "/readyz", timeout=10)  # noqa: E731
    try:
        procs.wait_until(lambda: ready().status_code == 200, 60, what="ready")
        assert requests.get(url + "/healthz", timeout=5).json() == {"status": "ok"}
        procs.stop(redis_proc)
        red = ready()
        assert red.status_code == 503 and "redis" in red.json()["failed"]
        assert "redis" in red.json()["checks"]["redis"]["error"]
        assert requests.get(url + "/healthz", timeout=5).status_code == 200
        redis_proc, _ = procs.start_redis(port)
        seen = []
        procs.wait_until(lambda: seen.append(ready()) or seen[-1].status_code == 200, 60,
                         what="ready again")
        assert seen[-1].json()["failed"] == [] and seen[-1].json()["status"] == "ok"
    finally:
        server.shutdown()
        procs.stop(worker)
        procs.stop(redis_proc)


def test_refused_connections_are_retried_before_the_first_byte():
    port = procs.free_port()
    upstream = Upstream(f"http://127.0.0.1:{port}", retries=2, backoff=0.2)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as refused:
        upstream.get_json("/api/version")
    assert refused.value.status == 503 and time.monotonic() - started >= 0.6  # 0.2 + 0.4
    # An upstream that comes up during the backoff is reached by a retry.
    proc = None

    def late_start():
        nonlocal proc
        time.sleep(0.3)
        proc = procs.spawn(["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"])

    with ThreadPoolExecutor(1) as pool:
        pool.submit(late_start)
        slow = Upstream(f"http://127.0.0.1:{port}", retries=5, backoff=0.3)
        try:
            assert slow.request("GET", "/").status_code == 200
        finally:
            time.sleep(0.1)
            procs.stop(proc)


def test_compose_file_has_every_service_with_health_checks():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"web", "worker", "beat", "redis", "ollama", "flower"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert services["ollama"]["image"].startswith("ollama/ollama")
    assert "ollama:/root/.ollama" in services["ollama"]["volumes"]
    assert "data:/data" in services["web"]["volumes"]
    assert {"data", "ollama"} <= set(compose["volumes"])
    entry = (DOCKER / "entrypoint.sh").read_text()
    for name in ("web", "worker", "beat", "flower"):
        assert services[name]["command"][0] in entry
        assert services[name]["environment"]["OLLAMA_HOST"] == "http://ollama:11434"


def test_entrypoint_runs_outside_docker(tmp_path, engine_url, logs_dir):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'entry.db'}", "REDIS_URL": "redis://unused:1/0",
           "OLLAMA_HOST": engine_url, "VIRTUAL_ENV": ""}
    migrate = subprocess.run([str(DOCKER / "entrypoint.sh"), "migrate"], env={**procs.os.environ, **env},
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    tables = sqlite3.connect(tmp_path / "entry.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert {("sessions",), ("messages",)} <= set(tables)


def test_production_server_streams_a_chat(stack, logs_dir):
    """gunicorn with gevent workers, started by the entrypoint, in front of the real worker."""
    env = {**stack.env, "VIRTUAL_ENV": ""}
    port = procs.free_port()
    web = procs.spawn([str(DOCKER / "entrypoint.sh"), "web"], log=logs_dir / "entry-web.log",
                      env={**env, "CHATBOT_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        procs.wait_until(lambda: procs.http_ok(url + "/healthz"), 60, web, "gunicorn")
        assert requests.get(url + "/", timeout=5).text == "Ollama is running"
        assert "chatbot_queue_depth" in requests.get(url + "/metrics", timeout=5).text
        sid = str(uuid.uuid4())
        client = ollama.Client(host=url, headers={"X-Session-ID": sid})
        parts = list(client.chat(MODEL, messages=[{"role": "user", "content": "Hi"}],
                                 options=SHORT, stream=True))
        assert parts[-1].done and "".join(p.message.content for p in parts)
        assert [r.role for r in stack.rows(sid)] == ["user", "assistant"]
    finally:
        procs.stop(web)

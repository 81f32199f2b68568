"""`make compose-test`: the compose stack brought up with podman and a chat sent through it.

docker/compose.yaml with compose.engine.yaml (the bundled engine as the upstream) and
compose.local.yaml (Redis from Debian's package, ports on loopback), as project `chatbot-ci`,
with Flower's profile on. Checks, in order:
  every service healthy; every chatbot container runs as uid 10001 and cannot write its code
  or packages, yet the app writes its database (the data volume) and its instance folder;
  a key is required, and a chat streamed with it is stored in the database volume;
  a worker killed (SIGKILL, as the OOM killer would) is brought back by its restart policy
  and serves the next chat; `down` and `up` again keep the session (the volume);
  Flower answers only with its password.
Everything of the project (containers, pod, network, volumes) is removed before and after.
Needs podman, podman-compose on PATH, and the images of `make image`. Standard library only.
Podman without systemd runs no health checks on its own, and podman-compose below podman 4.6
does not wait for `service_healthy`: this script runs the checks (`podman healthcheck run`).
"""
import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

DOCKER = Path(__file__).resolve().parent
PROJECT = os.environ.get("COMPOSE_TEST_PROJECT", "chatbot-ci")
FILES = [DOCKER / "compose.yaml", DOCKER / "compose.engine.yaml", DOCKER / "compose.local.yaml"]
SERVICES = ["redis", "ollama", "web", "worker", "beat", "flower"]
CHATBOT = ["ollama", "web", "worker", "beat", "flower"]  # the services running the chatbot image
MODEL = "smollm2:135m"
STARTED = time.monotonic()


def log(message):
    print(f"[compose-test {time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KEY = "sk-" + secrets.token_hex(16)
ENV = {
    **os.environ,
    "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(DOCKER / "podman" / "containers.conf")),
    "REDIS_PASSWORD": secrets.token_hex(16),
    "API_KEYS": f"ci={KEY}",
    "REQUIRE_KEYS": "true",
    "FLOWER_USER": "ops",
    "FLOWER_PASSWORD": secrets.token_hex(12),
}
WEB_PORT, FLOWER_PORT = free_port(), free_port()
WEB = f"http://127.0.0.1:{WEB_PORT}"
FLOWER = f"http://127.0.0.1:{FLOWER_PORT}"
# The published ports on loopback, at free ports (not 8000, which `make run` may hold), in
# place of compose.yaml's (!override, as compose merges port lists).
PORTS = Path(tempfile.mkdtemp(prefix="chatbot-compose-test-")) / "compose.ports.yaml"
PORTS.write_text(f"""services:
  web:
    ports: !override
      - "127.0.0.1:{WEB_PORT}:8000"
  flower:
    ports: !override
      - "127.0.0.1:{FLOWER_PORT}:5555"
""")
FILES.append(PORTS)


def run(args, timeout=60, check=True, quiet=False):
    result = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
    if not quiet and result.returncode != 0:
        log(f"({' '.join(args[:3])}... exited {result.returncode})")
    return result


def compose(*args, timeout=300, check=True):
    files = [a for f in FILES for a in ("-f", str(f))]
    return run(["podman-compose", "-p", PROJECT, *files, "--profile", "monitoring", *args],
               timeout=timeout, check=check)


def containers():
    """{service: container name} of this project's containers, running or not."""
    out = run(["podman", "ps", "-a", "--format", "json",
               "--filter", f"label=io.podman.compose.project={PROJECT}"]).stdout
    return {c["Labels"].get("com.docker.compose.service"): c["Names"][0]
            for c in json.loads(out or "[]")}


def inspect(name):
    return json.loads(run(["podman", "inspect", name]).stdout)[0]


def clean():
    """Everything of the project gone, whatever state a previous run left."""
    label = f"label=io.podman.compose.project={PROJECT}"
    ids = run(["podman", "ps", "-aq", "--filter", label]).stdout.split()
    if ids:  # -v: with their anonymous volumes, if any. Without systemd, podman removes the
        # containers but exits 125 on their health check timers: leftovers() tells the truth.
        run(["podman", "rm", "-f", "-v", "-t", "0", *ids], check=False, quiet=True)
    compose("down", "-v", "-t", "5", timeout=180, check=False)
    run(["podman", "pod", "rm", "-f", "--ignore", f"pod_{PROJECT}"], check=False, quiet=True)
    volumes = run(["podman", "volume", "ls", "-q", "--filter", label]).stdout.split()
    if volumes:
        run(["podman", "volume", "rm", "-f", *volumes], check=False)
    run(["podman", "network", "rm", "-f", f"{PROJECT}_default"], check=False, quiet=True)


def leftovers():
    label = f"label=io.podman.compose.project={PROJECT}"
    return (run(["podman", "ps", "-aq", "--filter", label]).stdout.split()
            + run(["podman", "volume", "ls", "-q", "--filter", label]).stdout.split()
            + run(["podman", "pod", "ps", "-q", "--filter", f"name=pod_{PROJECT}"]).stdout.split())


def diagnose():
    try:
        log("diagnosis:\n" + compose("ps", check=False, timeout=60).stdout)
        for service, name in sorted(containers().items()):
            logs = run(["podman", "logs", "--tail", "40", name], check=False, quiet=True)
            print(f"--- {service} ({name}) ---\n{logs.stdout}{logs.stderr}", flush=True)
    except Exception as exc:  # the diagnosis must not hide the failure
        print(f"(diagnosis failed: {exc})", flush=True)


def wait_healthy(services, timeout=300):
    """Each service's container running and its health check passing (run here, by hand)."""
    deadline = time.monotonic() + timeout
    pending = set(services)
    while pending:
        names = containers()
        for service in sorted(pending):
            name = names.get(service)
            if not name or not inspect(name)["State"].get("Running"):
                continue
            if run(["podman", "healthcheck", "run", name], timeout=60, check=False,
                   quiet=True).returncode == 0:
                pending.discard(service)
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"not healthy after {timeout} s: {sorted(pending)}")
        if pending:
            time.sleep(2)
    log(f"healthy: {', '.join(services)}")


def request(method, url, body=None, headers=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def chat(session_id, text, timeout=240):
    """A streamed /api/chat with the key: (session id, reply text, chunk count)."""
    body = {"model": MODEL, "stream": True, "options": {"num_predict": 12, "temperature": 0},
            "messages": [{"role": "user", "content": text}]}
    if session_id:
        body["session_id"] = session_id
    req = urllib.request.Request(WEB + "/api/chat", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {KEY}",
                                          "Content-Type": "application/json"})
    chunks, reply, last = 0, "", None
    with urllib.request.urlopen(req, timeout=timeout) as response:
        assert response.status == 200, response.status
        sid = response.headers.get("X-Session-ID")
        for line in response:
            if not line.strip():
                continue
            last = json.loads(line)
            assert "error" not in last, last
            chunks += 1
            reply += last.get("message", {}).get("content", "")
    assert last and last.get("done") is True, f"the stream did not end with done: {last}"
    assert chunks >= 2, f"not streamed: {chunks} chunk(s)"
    return last.get("session_id") or sid, reply, chunks


def stored(session_id):
    """(role, content) of the session's messages, read from the database file in the volume."""
    script = ("import json, sqlite3, sys; c = sqlite3.connect('/data/chatbot.db'); "
              "print(json.dumps(c.execute('SELECT role, content FROM messages WHERE session_id = ? "
              "ORDER BY id', (sys.argv[1],)).fetchall()))")
    out = run(["podman", "exec", containers()["web"], "python", "-c", script, session_id]).stdout
    return [tuple(row) for row in json.loads(out)]


def check_users_and_writable_places():
    names = containers()
    for service in CHATBOT:
        uid = run(["podman", "exec", names[service], "id", "-u"]).stdout.strip()
        assert uid == "10001", f"{service} runs as uid {uid}"
    web = names["web"]
    site = run(["podman", "exec", web, "python", "-c",
                "import flask, os; print(os.path.dirname(os.path.dirname(flask.__file__)))"]
               ).stdout.strip()
    code = ["/app", "/app/chatbot", "/app/chatbot/__init__.py", "/app/migrations", "/app/wsgi.py",
            "/app/docker/entrypoint.sh", site]
    writable = run(["podman", "exec", web, "sh", "-c",
                    'for p; do [ -w "$p" ] && echo "$p"; done; true', "-", *code]).stdout.split()
    assert not writable, f"the app user can write its code: {writable}"
    denied = run(["podman", "exec", web, "touch", "/app/chatbot/written"], check=False, quiet=True)
    assert denied.returncode != 0, "the app user wrote into /app/chatbot"
    # The database in the volume is the app user's (the web made it with its migrations).
    owner = run(["podman", "exec", web, "stat", "-c", "%u", "/data/chatbot.db"]).stdout.strip()
    assert owner == "10001", f"/data/chatbot.db belongs to uid {owner}"
    # The app writes its instance folder: a database there, migrated by the app itself.
    run(["podman", "exec", "-e", "DATABASE_URL=sqlite:////app/instance/check.db", web,
         "flask", "--app", "wsgi", "db", "upgrade"], timeout=120)
    owner = run(["podman", "exec", web, "stat", "-c", "%u", "/app/instance/check.db"]).stdout.strip()
    assert owner == "10001", f"instance/check.db belongs to uid {owner}"
    log(f"uid 10001 everywhere; code and {site} read-only; /data and instance/ written")


def check_keys():
    status, _ = request("POST", WEB + "/api/chat",
                        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 401, f"a chat without a key got {status}"


def kill_worker_and_wait():
    name = containers()["worker"]
    before = inspect(name)
    pid, restarts = before["State"]["Pid"], before.get("RestartCount", 0)
    os.kill(pid, signal.SIGKILL)
    log(f"worker's process {pid} killed (SIGKILL); waiting for its restart policy")
    deadline = time.monotonic() + 120
    while True:
        state = inspect(name)
        if state.get("RestartCount", 0) > restarts and state["State"].get("Running"):
            break
        assert time.monotonic() < deadline, f"the worker was not restarted: {state['State']}"
        time.sleep(1)
    log(f"worker restarted (restart count {state.get('RestartCount')})")


def check_flower():
    url = FLOWER + "/api/workers"
    status, _ = request("GET", url)
    assert status == 401, f"flower without a password: {status}"
    wrong = base64.b64encode(b"ops:wrong").decode()
    status, _ = request("GET", url, headers={"Authorization": f"Basic {wrong}"})
    assert status == 401, f"flower with a wrong password: {status}"
    right = base64.b64encode(f"ops:{ENV['FLOWER_PASSWORD']}".encode()).decode()
    status, body = request("GET", url, headers={"Authorization": f"Basic {right}"})
    assert status == 200, f"flower with its password: {status} {body[:200]!r}"
    log("flower: 401 without its password and with a wrong one, 200 with it")


def main():
    log(f"project {PROJECT}: cleaning up what an earlier run left")
    clean()
    try:
        compose("up", "-d", timeout=300)
        wait_healthy(SERVICES)
        check_users_and_writable_places()
        check_keys()

        session_id, reply, chunks = chat(None, "Say hello.")
        assert session_id, "no session id"
        log(f"chat streamed ({chunks} chunks) in session {session_id}: {reply!r}")
        rows = stored(session_id)
        assert rows == [("user", "Say hello."), ("assistant", reply)], rows
        log("the turn is in /data/chatbot.db (the data volume)")

        kill_worker_and_wait()
        _, reply2, _ = chat(session_id, "And goodbye.")
        log(f"the next chat was served after the restart: {reply2!r}")

        compose("down", "-t", "10", timeout=180)
        assert not containers(), "containers left after down"
        log("down (volumes kept); up again")
        compose("up", "-d", timeout=300)
        wait_healthy(SERVICES)
        status, body = request("GET", f"{WEB}/api/sessions/{session_id}",
                               headers={"Authorization": f"Bearer {KEY}"})
        assert status == 200, (status, body[:300])
        contents = [m["content"] for m in json.loads(body)["messages"]]
        assert contents == ["Say hello.", reply, "And goodbye.", reply2], contents
        log("the session survived down and up (4 messages)")

        check_flower()
    except BaseException:
        diagnose()
        raise
    finally:
        log("cleaning up")
        clean()
        PORTS.unlink()
        PORTS.parent.rmdir()
        left = leftovers()
        assert not left, f"left behind: {left}"
    log("passed")


if __name__ == "__main__":
    # make's timeout sends SIGTERM: leave through main's cleanup, not in the middle of it
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    try:
        main()
    except AssertionError as failure:
        log(f"FAILED: {failure}")
        sys.exit(1)

"""Keys fail closed, and keys-off mode is local only (#23 parts 4 and 5). Revoking the last key
or starting without API_KEYS once they were set leaves every non-open route at 401; a database
not at the newest migration is refused at start and answers 401 if served anyway; REQUIRE_KEYS
and an open bind without keys refuse to start. Without keys, foreign Hosts and browser Origins
get Ollama's 403 with no body; its default local origins and the page's own pass; a key makes
any Host and Origin acceptable."""
import flask_migrate
import pytest
import requests

from chatbot import create_app, store
from chatbot.ops import procs
from tests.conftest import migrated_app, serve

DEAD = "127.0.0.1:9"  # no upstream: the routes used here never reach one
KEY = "key-closed-0123456789"


@pytest.fixture
def fresh(redis_url, tmp_path):
    """(app, its database URL): a migrated database of its own, keys off."""
    url = f"sqlite:///{tmp_path / 'closed.db'}"
    return migrated_app(redis_url, DEAD, url)[0], url


def refusal(app, binds):
    from chatbot.ops import startup  # new in #23: imported here so that every test fails before

    return startup.refusal(app, binds)


def cli(app, *args):
    result = app.test_cli_runner().invoke(args=["keys", *args])
    assert result.exit_code == 0, result.output
    return result.output


def anonymous(app):
    client = app.test_client()
    return client.get("/api/sessions"), client.get("/v1/models"), client.get("/healthz")


def test_revoking_the_last_key_fails_closed_until_a_key_exists(fresh, redis_url):
    app, url = fresh
    key = cli(app, "create", "root", "--admin").strip()
    app.extensions["keys"].forget()
    assert app.test_client().get("/api/sessions", headers={"Authorization": f"Bearer {key}"}
                                 ).status_code == 200
    revoked = cli(app, "revoke", "root")
    assert "revoked root" in revoked and "no key is left" in revoked and "keys off" in revoked
    assert "no key is left" in cli(app, "list")
    for restarted in (app, create_app({"REDIS_URL": redis_url, "OLLAMA_HOST": DEAD,
                                       "SQLALCHEMY_DATABASE_URI": url})):
        restarted.extensions["keys"].forget()
        sessions, v1, health = anonymous(restarted)
        assert (sessions.status_code, sessions.get_json()) == (401, {"error": "unauthorized"})
        assert v1.status_code == 401 and v1.get_json()["error"]["message"] == "unauthorized"
        assert health.status_code == 200  # open routes stay open
        assert restarted.test_client().post("/api/pull", json={"model": "x"}).status_code == 401
    # Turning keys off is deliberate, and only once no key is left.
    cli(app, "create", "again")
    refused = app.test_cli_runner().invoke(args=["keys", "off"])
    assert refused.exit_code != 0 and "keys exist" in refused.output
    cli(app, "revoke", "again")
    assert "keys are off" in cli(app, "off")
    app.extensions["keys"].forget()
    assert anonymous(app)[0].status_code == 200


def test_api_keys_once_served_are_remembered(fresh, redis_url):
    app, url = fresh
    config = {"REDIS_URL": redis_url, "OLLAMA_HOST": DEAD, "SQLALCHEMY_DATABASE_URI": url}
    keyed = create_app({**config, "API_KEYS": f"alice={KEY}"})
    assert refusal(keyed, ["127.0.0.1:8000"]) is None  # a start with keys notes it
    later = create_app(config)  # the next start, API_KEYS gone
    assert anonymous(later)[0].status_code == 401
    assert refusal(later, ["127.0.0.1:8000"]) is None  # starts, refusing everyone


def test_an_unmigrated_database_fails_closed_and_does_not_start(redis_url, tmp_path, logs):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = {"REDIS_URL": redis_url, "OLLAMA_HOST": DEAD, "SQLALCHEMY_DATABASE_URI": url}
    app = create_app(config)
    sessions, _, health = anonymous(app)  # no table at all
    assert (sessions.status_code, health.status_code) == (401, 200)
    with app.app_context():
        store.migrations(app)
        flask_migrate.upgrade(revision="0006")  # one revision short
    behind = create_app(config)
    assert anonymous(behind)[0].status_code == 401
    problem = refusal(behind, ["127.0.0.1:8000"])
    assert "0006" in problem and "flask --app wsgi db upgrade" in problem
    log = logs / "closed-unmigrated.log"
    web = procs.spawn([procs.bin_path("chatbot"), "web", "--port", str(procs.free_port())],
                      env={"DATABASE_URL": url, "REDIS_URL": redis_url}, log=log)
    try:
        assert web.wait(60) != 0
    finally:
        procs.stop(web)
    assert "flask --app wsgi db upgrade" in log.read_text()


def web_start(env, log, host="127.0.0.1"):
    """`chatbot web`: its exit code when it refuses to start, None once it serves."""
    port = procs.free_port()
    web = procs.spawn([procs.bin_path("chatbot"), "web", "--host", host, "--port", str(port)],
                      env=env, log=log)
    try:
        procs.wait_until(lambda: web.poll() is not None or procs.http_ok(
            f"http://127.0.0.1:{port}/"), 60, what="chatbot web")
        return web.poll()
    finally:
        procs.stop(web)


def test_require_keys_and_an_open_bind_without_keys_refuse_to_start(fresh, redis_url, logs):
    _, url = fresh
    env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "OLLAMA_HOST": DEAD,
           "API_KEYS": "", "ADMIN_API_KEYS": "", "ALLOW_OPEN": "", "REQUIRE_KEYS": ""}
    log = logs / "closed-require.log"
    assert web_start({**env, "REQUIRE_KEYS": "true"}, log) not in (None, 0)
    assert "REQUIRE_KEYS=true and no key exists" in log.read_text()
    log = logs / "closed-open.log"
    assert web_start(env, log, host="0.0.0.0") not in (None, 0)
    assert "0.0.0.0:" in log.read_text() and "ALLOW_OPEN=true" in log.read_text()
    assert web_start({**env, "ALLOW_OPEN": "true"}, log, host="0.0.0.0") is None
    assert web_start({**env, "REQUIRE_KEYS": "true", "API_KEYS": f"a={KEY}"}, log) is None


def test_chatbot_up_refuses_to_start_without_a_required_key(engine_url, tmp_path, logs):
    log = logs / "closed-up.log"
    env = {"OLLAMA_HOST": engine_url, "REDIS_URL": "", "REQUIRE_KEYS": "true",
           "API_KEYS": "", "ADMIN_API_KEYS": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}"}
    up = procs.spawn([procs.bin_path("chatbot"), "up", "--port", str(procs.free_port())],
                     env=env, log=log)
    try:
        assert up.wait(90) == 1
    finally:
        procs.stop(up)
    assert "REQUIRE_KEYS=true and no key exists" in log.read_text()


ACCEPTED_ORIGINS = ["http://localhost", "http://localhost:3000", "https://127.0.0.1:8443",
                    "http://0.0.0.0:8080", "app://obsidian.md", "file://", "tauri://localhost",
                    "vscode-webview://abc123", "vscode-file://vscode-app", "http://page.example"]
REFUSED_ORIGINS = ["http://evil.example", "https://localhost.evil.example", "null",
                   "chrome-extension://abcdef", "http://127.0.0.1.evil.example"]
ACCEPTED_HOSTS = ["localhost:8000", "127.0.0.1", "127.0.0.1:8000", "[::1]:8000", "[::1]",
                  "10.1.2.3:8000", "192.168.0.9", "host.docker.internal:8000", "box.local",
                  "chat.example.com:443", "app.localhost:8000"]
REFUSED_HOSTS = ["evil.example", "evil.example:8000", "8.8.8.8:8000", "localhost.evil.example"]


def test_keys_off_refuses_foreign_origins_and_hosts_as_ollama_and_a_key_lets_them_in(fresh):
    _, url = fresh
    app = create_app({"REDIS_URL": fresh[0].config["REDIS_URL"], "OLLAMA_HOST": DEAD,
                      "SQLALCHEMY_DATABASE_URI": url, "CORS_ORIGINS": "http://page.example",
                      "ALLOWED_HOSTS": "chat.example.com"})
    client = app.test_client()
    for origin in ACCEPTED_ORIGINS:
        assert client.get("/api/sessions", headers={"Origin": origin}).status_code == 200, origin
    for host in ACCEPTED_HOSTS:
        assert client.get("/api/sessions", headers={"Host": host}).status_code == 200, host
    for headers in [{"Origin": o} for o in REFUSED_ORIGINS] + [{"Host": h} for h in REFUSED_HOSTS]:
        refused = client.post("/api/sessions/import", json={}, headers=headers)
        assert (refused.status_code, refused.data) == (403, b""), headers  # Ollama's answer
    assert client.get("/v1/models", headers={"Origin": "http://evil.example"}).status_code == 403
    # Over HTTP: the page's own origin passes, another site's page does not.
    server, base = serve(app)
    try:
        own = requests.get(base + "/api/sessions", headers={"Origin": base}, timeout=10)
        other = requests.post(base + "/api/chat", json={"model": "m", "messages": []},
                              headers={"Origin": "http://evil.example"}, timeout=10)
        assert (own.status_code, other.status_code, other.content) == (200, 403, b"")
    finally:
        server.shutdown()
    # With keys the key is the authority: any Host and Origin with one, 401 without.
    keyed = create_app({"REDIS_URL": app.config["REDIS_URL"], "OLLAMA_HOST": DEAD,
                        "SQLALCHEMY_DATABASE_URI": url, "API_KEYS": f"alice={KEY}"}).test_client()
    foreign = {"Origin": "http://evil.example", "Host": "evil.example"}
    assert keyed.get("/api/sessions", headers={**foreign, "Authorization": f"Bearer {KEY}"}
                     ).status_code == 200
    assert keyed.get("/api/sessions", headers=foreign).status_code == 401

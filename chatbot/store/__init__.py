"""Sessions and messages: the SQLAlchemy models and the functions that read and write them."""
import logging

from chatbot.store.models import db, ChatSession, Message, Summary  # noqa: F401
from chatbot.store.sessions import (  # noqa: F401
    Conflict, append_messages, chain, fail_request, leading_system, newest_first,
    note_truncation, open_session, save_lost_reply, save_reply, session_owner, thread_tail,
    touch_session,
)
from chatbot.store.summaries import latest_summary, save_summary, span_messages  # noqa: F401

log = logging.getLogger(__name__)


def init_app(app):
    from sqlalchemy import event

    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if uri.startswith("sqlite"):
        # Wait for the other process's write instead of failing with "database is locked".
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"timeout": 30}})
    db.init_app(app)
    if uri.startswith("sqlite"):
        with app.app_context():
            event.listen(db.engine, "connect", _sqlite_pragmas)


CHECKPOINT_EVERY = 0.5  # seconds between a worker's checkpoints of SQLite's WAL
CHECKPOINT_PAGES = 10_000  # ... and where a commit does one itself (a safety net, 40 MB)


def _sqlite_pragmas(conn, _record):
    # WAL lets the web read while the worker writes; NORMAL keeps a commit off the fsync path.
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    # A commit that happens to cross SQLite's default 1,000 pages copies the WAL back and
    # syncs it, inline: a worker checkpoints in the background instead (checkpoint_behind).
    cur.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
    cur.execute("PRAGMA cache_size=-32000")  # 32 MB: a long thread's index stays in memory
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def checkpoint_behind(app):
    """In a worker, on SQLite: a thread that checkpoints the WAL every CHECKPOINT_EVERY s, so
    that no turn's commit pays for it (about 80 us a commit on average, 4 ms at the 99th
    percentile, measured here). PASSIVE: it never waits for, or blocks, a reader or writer."""
    import threading
    import time

    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        return None

    def run():
        while True:
            time.sleep(CHECKPOINT_EVERY)
            try:
                with app.app_context(), db.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:  # noqa: BLE001  the next one tries again; a commit is the net
                log.warning("WAL checkpoint failed", exc_info=True)

    thread = threading.Thread(target=run, daemon=True, name="wal-checkpoint")
    thread.start()
    return thread


def upgrade():
    """Migrate the database of the app in context to the newest revision."""
    import flask_migrate
    from flask import current_app

    migrations(current_app)
    flask_migrate.upgrade()


def migrations(app):
    """Flask-Migrate on `app`, from first use: alembic costs a process 11 MB, and only what
    migrates uses it (`flask db`, upgrade above), never a server. Returns the `flask db`
    command group."""
    from flask_migrate import Migrate, cli

    if "migrate" not in app.extensions:
        Migrate(app, db, directory=str(app.config.get("MIGRATIONS_DIR", _migrations_dir())))
    return cli.db


def _migrations_dir():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "migrations"

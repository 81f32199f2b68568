"""Sessions and messages: the SQLAlchemy models and the functions that read and write them."""
import logging
import re
from pathlib import Path

from sqlalchemy.exc import OperationalError, ProgrammingError

from chatbot.store.models import db, ChatSession, Message, Summary  # noqa: F401
from chatbot.store.sessions import (  # noqa: F401
    Conflict, append_messages, chain, fail_request, leading_system, newest_first,
    note_truncation, open_session, save_lost_reply, save_reply, session_owner, session_title,
    set_title_if_unset, thread_tail, touch_session,
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
    return Path(__file__).resolve().parents[2] / "migrations"


UPGRADE = "flask --app wsgi db upgrade"


def unmigrated(app):
    """Why the database of `app` (in context) must not be served, with the command that
    migrates it; None when it is at the newest migration. A server checks once, at its start:
    one query, and no alembic (migrations/versions is read as text)."""
    newest = _heads(Path(app.config.get("MIGRATIONS_DIR", _migrations_dir())) / "versions")
    try:
        at = set(db.session.execute(db.text("SELECT version_num FROM alembic_version")).scalars())
    except (OperationalError, ProgrammingError) as exc:
        db.session.rollback()
        if not missing_table(exc):
            raise  # the database is away: no start either, with its own error
        at = set()
    if not newest or at == newest:
        return None
    return (f"the database is not at the newest migration ({', '.join(sorted(newest))}; it is "
            f"at {', '.join(sorted(at)) or 'none'}): run `{UPGRADE}` first")


def missing_table(exc):
    """Whether a database error says a table does not exist (SQLite, PostgreSQL)."""
    text = str(exc.orig).lower()
    return "no such table" in text or ("relation" in text and "does not exist" in text)


def _heads(versions):
    """The revisions no other revision follows (the newest), from the migration files."""
    revisions, followed = set(), set()
    for path in versions.glob("*.py"):
        text = path.read_text()
        revisions.update(re.findall(r'^revision = "([^"]+)"', text, re.M))
        followed.update(re.findall(r'^down_revision = "([^"]+)"', text, re.M))
    return revisions - followed

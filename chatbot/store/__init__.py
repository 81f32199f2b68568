"""Sessions and messages: the SQLAlchemy models and the functions that read and write them."""
from chatbot.store.models import db, ChatSession, Message, Summary  # noqa: F401
from chatbot.store.sessions import (  # noqa: F401
    Conflict, append_messages, chain, fail_request, leading_system, newest_first,
    note_truncation, open_session, save_lost_reply, save_reply, session_owner, thread_tail,
    touch_session,
)
from chatbot.store.summaries import latest_summary, save_summary, span_messages  # noqa: F401


def init_app(app):
    from flask_migrate import Migrate
    from sqlalchemy import event

    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if uri.startswith("sqlite"):
        # Wait for the other process's write instead of failing with "database is locked".
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"timeout": 30}})
    db.init_app(app)
    Migrate(app, db, directory=str(app.config.get("MIGRATIONS_DIR", _migrations_dir())))
    if uri.startswith("sqlite"):
        with app.app_context():
            event.listen(db.engine, "connect", _sqlite_pragmas)


def _sqlite_pragmas(conn, _record):
    # WAL lets the web read while the worker writes; NORMAL keeps a commit off the fsync path.
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA cache_size=-32000")  # 32 MB: a long thread's index stays in memory
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _migrations_dir():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "migrations"

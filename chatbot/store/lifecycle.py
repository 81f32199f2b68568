"""Session life cycle. Idle sessions are archived (a flag, never a deletion) by a Celery task
that beat runs every 15 minutes on the `maintenance` queue, away from the single-slot
`ollama` queue; using a session again restores it (`store.open_session`). Archived sessions
are deleted only when an administrator purges them.

Every function takes `now` so tests (and a cautious admin) can move the clock.
"""
import logging
from datetime import datetime, timedelta

from celery import shared_task
from flask import current_app

from chatbot.store.admin import parse_time
from chatbot.store.models import ChatSession, Message, Summary, db, utcnow

log = logging.getLogger(__name__)
BATCH = 500  # ids per statement: well under SQLite's bound-parameter limit


def _ids(*conditions):
    query = db.select(ChatSession.id).where(*conditions).order_by(ChatSession.last_access)
    return db.session.execute(query).scalars().all()


def _in_batches(ids, run, progress=None):
    """Apply `run(batch) -> rows affected` to ids in batches, one commit each, so a long
    operation holds the database's write lock only briefly at a time."""
    done = 0
    for start in range(0, len(ids), BATCH):
        batch = ids[start:start + BATCH]
        done += run(batch)
        db.session.commit()
        if progress:
            progress(len(batch))
    return done


def find_idle(idle_hours=None, now=None):
    """(ids, cutoff): unarchived sessions not used since `idle_hours` (default
    SESSION_TIMEOUT_HOURS) before `now`."""
    if idle_hours is None:
        idle_hours = current_app.config["SESSION_TIMEOUT_HOURS"]
    cutoff = (now or utcnow()) - timedelta(hours=float(idle_hours))
    return _ids(ChatSession.archived.is_(False), ChatSession.last_access < cutoff), cutoff


def archive(ids, cutoff, progress=None):
    """Archive these sessions. The idle test is repeated in the UPDATE itself: a session
    someone used since `find_idle` stays active."""
    def run(batch):
        return db.session.execute(
            db.update(ChatSession).where(ChatSession.id.in_(batch),
                                         ChatSession.archived.is_(False),
                                         ChatSession.last_access < cutoff)
            .values(archived=True).execution_options(synchronize_session=False)).rowcount
    return _in_batches(ids, run, progress)


def archive_idle(idle_hours=None, now=None, progress=None):
    ids, cutoff = find_idle(idle_hours, now)
    return archive(ids, cutoff, progress)


def find_purgeable(older_than, now=None):
    """(ids, cutoff): archived sessions last used more than `older_than` (a timedelta) ago."""
    cutoff = (now or utcnow()) - older_than
    return _ids(ChatSession.archived.is_(True), ChatSession.last_access < cutoff), cutoff


def delete_archived(ids, cutoff, progress=None):
    """Delete these sessions and their messages if they are still archived and old: one that
    was used (hence restored) since `find_purgeable` survives."""
    def run(batch):
        gone = db.session.execute(
            db.delete(ChatSession).where(ChatSession.id.in_(batch),
                                         ChatSession.archived.is_(True),
                                         ChatSession.last_access < cutoff)
            .returning(ChatSession.id).execution_options(synchronize_session=False)
        ).scalars().all()
        if gone:  # the foreign key cascades too; this also covers a database that ignores it
            for table in (Message, Summary):
                db.session.execute(db.delete(table).where(table.session_id.in_(gone))
                                   .execution_options(synchronize_session=False))
        return len(gone)
    return _in_batches(ids, run, progress)


def purge(older_than, now=None, progress=None):
    ids, cutoff = find_purgeable(older_than, now)
    return delete_archived(ids, cutoff, progress)


@shared_task(name="chatbot.archive_idle_sessions")
def archive_idle_sessions(now=None):
    """Beat's periodic job. `now` (ISO 8601 string) moves the clock; absent, it is the time."""
    if now is not None and not isinstance(now, datetime):
        now = parse_time(now, "now")
    count = archive_idle(now=now)
    log.info("archived %d idle session(s)", count)
    return count

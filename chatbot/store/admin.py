"""Session administration shared by the REST views (chatbot/api/sessions.py) and the CLI
(chatbot/cli.py): list, read, rename, delete, archive, statistics. Export and import are in
chatbot/store/transfer.py.

Messages are only ever added through `append_messages`, which keeps the per-thread
bookkeeping (an import writes the same rows itself, in one transaction: transfer.py); this
module reads rows directly and never inserts them.
"""
import uuid
from datetime import datetime, timezone

from chatbot.store import branches, search as text_search
from chatbot.store.models import EXTRA_FIELDS, ChatSession, Message, Summary, db
from chatbot.store.summaries import newest_per_model

EXPORT_VERSION = 1
ROLES = ("system", "user", "assistant", "tool")
STATUSES = ("ok", "cancelled", "failed", "lost")
MAX_PER_PAGE = 100
MAX_PAGE = 10 ** 7  # an offset the database can hold
MAX_TITLE = 200


class AdminError(Exception):
    """A refused request; `status` is what the REST layer answers with (the CLI prints it)."""
    status = 400


class NotFound(AdminError):
    status = 404


class Conflict(AdminError):
    status = 409


class TooLarge(AdminError):
    status = 413


def iso(value):
    """Stored times are naive UTC; clients get RFC 3339 with a Z."""
    return value.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def parse_time(value, what="time"):
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise AdminError(f"{what}: {value!r} is not an ISO 8601 time")
    return parsed.astimezone(timezone.utc).replace(tzinfo=None) if parsed.tzinfo else parsed


def session_id(value):
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise AdminError(f"invalid session id {value!r}: must be a UUID")


def get(sid, visible_to=None):
    """The session, or NotFound. `visible_to`: a key's name; another key's session is not
    found either (None: every session, as for an admin)."""
    session = db.session.get(ChatSession, session_id(sid))
    if session is None or (visible_to is not None and session.owner != visible_to):
        raise NotFound(f"session '{sid}' not found")
    return session


def paging(page=1, per_page=20):
    """Validated page numbers; per_page above the maximum is capped rather than refused."""
    try:
        page, per_page = int(page), int(per_page)
    except (TypeError, ValueError):
        raise AdminError("page and per_page must be integers")
    if page < 1 or per_page < 1:
        raise AdminError("page and per_page must be at least 1")
    if page > MAX_PAGE:
        raise AdminError(f"page must be at most {MAX_PAGE}")
    return page, min(per_page, MAX_PER_PAGE)


def flag(value):
    """`?archived=true|false` (absent: None, meaning both)."""
    if value is None or isinstance(value, bool):
        return value
    if str(value).lower() not in ("true", "false"):
        raise AdminError(f"archived must be true or false, not {value!r}")
    return str(value).lower() == "true"


def _page(query, page, per_page):
    counted = db.select(db.func.count()).select_from(query.subquery())
    total = db.session.execute(counted).scalar_one()
    rows = db.session.execute(query.limit(per_page).offset((page - 1) * per_page)).scalars().all()
    return rows, {"page": page, "per_page": per_page, "total": total}


def _thread_counts(ids):
    """{session id: {model: message count}} for a page of sessions, in one grouped query."""
    counts = {}
    if ids:
        rows = db.session.execute(
            db.select(Message.session_id, Message.model, db.func.count())
            .where(Message.session_id.in_(ids)).group_by(Message.session_id, Message.model))
        for sid, model, n in rows:
            counts.setdefault(sid, {})[model] = n
    return counts


def summary(session, threads=None):
    if threads is None:
        threads = _thread_counts([session.id]).get(session.id, {})
    return {"id": session.id, "title": session.title, "created_at": iso(session.created_at),
            "last_access": iso(session.last_access), "archived": session.archived,
            "message_count": sum(threads.values()), "models": sorted(threads),
            "meta": session.meta or {}}


def list_sessions(page=1, per_page=20, archived=None, model=None, visible_to=None, search=None):
    """Newest use first; `model` keeps sessions having at least one message of that model;
    `visible_to` only that key's sessions; `search` those whose title contains it (any case) or
    with a message that says its words (chatbot.store.search), each found by a message with
    `match`: {message_id, snippet}."""
    (page, per_page), archived = paging(page, per_page), flag(archived)
    query, found = db.select(ChatSession), {}
    if search:
        if len(search) > MAX_TITLE:
            raise AdminError(f"search must be at most {MAX_TITLE} characters")
        condition, found = text_search.where(search, visible_to)
        query = query.where(condition)
    if visible_to is not None:
        query = query.where(ChatSession.owner == visible_to)
    if archived is not None:
        query = query.where(ChatSession.archived.is_(archived))
    if model:
        query = query.where(db.select(Message.id).where(
            Message.session_id == ChatSession.id, Message.model == model).exists())
    query = query.order_by(ChatSession.last_access.desc(), ChatSession.id)
    rows, info = _page(query, page, per_page)
    counts = _thread_counts([row.id for row in rows])
    return {"sessions": [{**summary(row, counts.get(row.id, {})),
                          **({"match": found[row.id]} if row.id in found else {})}
                         for row in rows], **info}


def message_dict(row):
    return {"id": row.id, "model": row.model, "role": row.role, "content": row.content,
            "tokens": row.tokens, "status": row.status, "request_id": row.request_id,
            "created_at": iso(row.created_at), **(row.extra or {})}


def show(sid, page=1, per_page=20, model=None):
    """The session's messages as its threads' active paths show them (with the turns kept
    aside, failed or cancelled); a message with siblings (the branches at its place,
    chatbot.store.branches) says which, oldest first."""
    session, (page, per_page) = get(sid), paging(page, per_page)
    query = db.select(Message).where(Message.session_id == session.id, db.or_(
        Message.seq.is_not(None), Message.pos.is_(None)))  # not a branch off the path
    if model:
        query = query.where(Message.model == model)
    rows, info = _page(query.order_by(Message.id), page, per_page)
    shown = branches.siblings(session.id, rows)
    return {**summary(session), "messages": [
        {**message_dict(row), **({"siblings": shown[row.id]}
                                 if shown.get(row.id, {}).get("count", 1) > 1 else {})}
        for row in rows], "summaries": summaries(session.id, model), **info}


def summaries(sid, model=None):
    """Each thread's newest summary of its dropped history (CONTEXT_STRATEGY=summarize):
    what is sent in place of messages first_seq..last_seq, apart from the messages."""
    return [{"model": row.model, "role": "system", "content": row.content, "tokens": row.tokens,
             "first_seq": row.first_seq, "last_seq": row.last_seq,
             "created_at": iso(row.created_at)}
            for row in newest_per_model(sid).values() if model in (None, row.model)]


def rename(sid, title):
    if title is not None and not isinstance(title, str):
        raise AdminError("title must be a string")
    if title is not None and len(title) > MAX_TITLE:
        raise AdminError(f"title must be at most {MAX_TITLE} characters")
    session = get(sid)
    session.title = (title or "").strip() or None
    db.session.commit()
    return summary(session)


def set_archived(sid, archived):
    """Archive or restore one session by hand (restoring does not count as using it)."""
    session = get(sid)
    session.archived = archived
    db.session.commit()
    return summary(session)


def delete(sid):
    """Delete a session and its messages; returns how many messages went with it."""
    session = get(sid)
    gone = db.session.execute(db.delete(Message).where(Message.session_id == session.id)).rowcount
    db.session.execute(db.delete(Summary).where(Summary.session_id == session.id))
    db.session.delete(session)
    db.session.commit()
    return gone


def stats():
    count = lambda *cols: db.select(*cols).select_from(Message)  # noqa: E731
    per_model = db.session.execute(
        count(Message.model, db.func.count(db.distinct(Message.session_id)), db.func.count(),
              db.func.coalesce(db.func.sum(Message.tokens), 0)).group_by(Message.model)
        .order_by(Message.model))
    archived = db.select(db.func.count(ChatSession.id)).where(ChatSession.archived.is_(True))
    return {
        "sessions": db.session.execute(db.select(db.func.count(ChatSession.id))).scalar_one(),
        "archived": db.session.execute(archived).scalar_one(),
        "messages": db.session.execute(count(db.func.count())).scalar_one(),
        "tokens": db.session.execute(count(db.func.coalesce(db.func.sum(Message.tokens), 0)))
        .scalar_one(),
        "models": {model: {"sessions": s, "messages": m, "tokens": t}
                   for model, s, m, t in per_model},
    }

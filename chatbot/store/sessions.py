"""Reading and appending to sessions. Appends are inserts: a turn never rewrites history, and
nothing here reads a whole thread, so a turn costs the same at message 10,000 as at 10.

The writes of a turn take `conn`: the worker passes a plain SQLAlchemy Connection, which
costs half what the ORM session does per commit (chatbot.worker.tasks); without one they go
through the session."""
import hashlib

from sqlalchemy.exc import IntegrityError

from chatbot.store.models import EXTRA_FIELDS, ChatSession, Message, db, utcnow
from chatbot.tokens import count_tokens

REPLY_PART = -1  # the reply's place among its request's rows; the request's messages are 0..n-1


class Conflict(Exception):
    """The write was refused: `stored` says the request's rows are there already (a duplicate),
    else another turn took the thread's next position."""

    def __init__(self, stored):
        super().__init__("already stored" if stored else "thread moved on")
        self.stored = stored


def chain(previous, role, content):
    """The thread's hash after one more (role, content)."""
    return hashlib.sha256(f"{previous}\0{role}\0{content or ''}".encode()).hexdigest()


def open_session(session_id):
    """Get or create the session and mark it used (an archived session comes back).
    The request path uses touch_session instead, committed with the turn's first append."""
    session, now = db.session.get(ChatSession, session_id), utcnow()
    if session is None:
        session = ChatSession(id=session_id, meta={}, created_at=now)
        db.session.add(session)
    session.last_access = now
    session.archived = False
    db.session.commit()
    return session


# INSERT ... ON CONFLICT, which SQLite and PostgreSQL both speak, written once: building and
# caching the equivalent ORM construct cost eight times as much on every turn.
_TOUCH = db.text(
    "INSERT INTO sessions (id, created_at, last_access, archived, meta, owner) "
    "VALUES (:id, :now, :now, :no, :meta, :owner) "
    "ON CONFLICT (id) DO UPDATE SET last_access = :now, archived = :no"
).bindparams(db.bindparam("now", type_=db.DateTime), db.bindparam("no", type_=db.Boolean),
             db.bindparam("meta", type_=db.JSON))


def touch_session(session_id, owner=None, conn=None):
    """The request path's open_session: one upsert statement (created, owned by `owner`, or
    marked used and un-archived), not committed (the turn's first append commits it)."""
    (conn or db.session).execute(_TOUCH, {"id": session_id, "now": utcnow(), "no": False,
                                          "meta": {}, "owner": owner})


def session_title(session_id):
    return db.session.execute(db.select(ChatSession.title)
                              .where(ChatSession.id == session_id)).scalar()


def set_title_if_unset(session_id, title, conn=None):
    """Name the session unless it has a title (one a user set is never replaced)."""
    conn = conn or db.session
    done = conn.execute(_SET_TITLE, {"session": session_id, "new_title": title})
    conn.commit()
    return done.rowcount == 1


_SET_TITLE = db.update(ChatSession.__table__).where(
    ChatSession.id == db.bindparam("session"), ChatSession.title.is_(None)).values(
    title=db.bindparam("new_title"))


def session_owner(session_id):
    """(whether the session exists, the key that owns it)."""
    row = db.session.execute(db.select(ChatSession.owner).where(ChatSession.id == session_id)).first()
    return (row is not None), (row.owner if row else None)


def note_truncation(session_id, model, dropped, conn=None):
    """Record in the session's metadata that its context was cut (committed with the turn)."""
    conn = conn or db.session
    meta = conn.execute(db.select(ChatSession.meta).where(ChatSession.id == session_id)).scalar()
    meta = dict(meta or {})
    meta["truncations"] = meta.get("truncations", 0) + 1
    meta["last_truncation"] = {"model": model, "dropped": dropped, "at": utcnow().isoformat() + "Z"}
    conn.execute(db.update(ChatSession.__table__).where(ChatSession.id == session_id)
                 .values(meta=meta))


def thread_tail(session_id, model, conn=None):
    """(seq, chain) of the thread's newest ok message; (0, "") for an empty thread."""
    row = (conn or db.session).execute(
        db.select(Message.seq, Message.chain)
        .where(Message.session_id == session_id, Message.model == model, Message.seq.is_not(None))
        .order_by(Message.id.desc()).limit(1)
    ).first()
    return (row.seq, row.chain) if row else (0, "")


def leading_system(session_id, model, limit=2):
    """The thread's first system messages (kept whatever else is truncated)."""
    rows = db.session.execute(
        db.select(Message).where(Message.session_id == session_id, Message.model == model,
                                 Message.seq.is_not(None), Message.role == "system")
        .order_by(Message.id).limit(limit)
    ).scalars()
    return [row.as_chat() | {"tokens": row.tokens, "seq": row.seq} for row in rows]


def newest_first(session_id, model, first_page=64):
    """The thread's ok messages from the newest back, fetched in growing pages (a context
    usually needs a few dozen, so a turn reads about what it sends)."""
    columns = (Message.id, Message.role, Message.content, Message.extra, Message.tokens, Message.seq)
    before, page = None, first_page
    while True:
        query = (db.select(*columns)
                 .where(Message.session_id == session_id, Message.model == model,
                        Message.seq.is_not(None))
                 .order_by(Message.id.desc()).limit(page))
        if before is not None:
            query = query.where(Message.id < before)
        rows = db.session.execute(query).all()
        for row in rows:
            yield {"role": row.role, "content": row.content, **(row.extra or {}),
                   "tokens": row.tokens, "seq": row.seq}
        if len(rows) < page:
            return
        before, page = rows[-1].id, page * 2


def append_messages(session_id, model, messages, request_id, status="ok", started_at=None,
                    truncated=0, tail=None, first_part=0, conn=None):
    """Insert messages ({role, content, tokens, ...}) at the end of the thread, in one commit
    with the session's pending changes. Only ok messages join the thread (seq and chain);
    cancelled or failed replies are kept aside. `truncated`: messages this turn's context left
    out, noted in the session's metadata. `tail`: the thread's (seq, chain) when the caller
    knows it. `first_part`: the first row's place among its request's rows (REPLY_PART for a
    reply). Returns the thread's new tail; raises Conflict (rolled back) if the database refuses
    the rows."""
    conn = conn or db.session
    if truncated:
        note_truncation(session_id, model, truncated, conn)
    if status == "ok":
        seq, last = tail if tail is not None else thread_tail(session_id, model, conn)
    else:
        seq, last = None, None
    rows, now = [], utcnow()
    for part, message in enumerate(messages, first_part):
        extra = {k: message[k] for k in EXTRA_FIELDS if message.get(k)}
        parent = last
        if status == "ok":
            seq, last = seq + 1, chain(last, message["role"], message.get("content"))
        rows.append(dict(
            session_id=session_id, model=model, role=message["role"],
            content=message.get("content") or "", extra=extra or None,
            tokens=message.get("tokens", 0), status=status, request_id=request_id,
            started_at=started_at, seq=seq, chain=last, part=part, created_at=now,
            pos=seq, prev_chain=parent if status == "ok" else None,
        ))
    try:
        if rows:  # one Core INSERT (the table's, not the ORM's bulk path): the hot path
            conn.execute(_INSERT_MESSAGES, rows)
        conn.commit()
    except IntegrityError:
        conn.rollback()
        raise Conflict(_has_rows(request_id, first_part, conn))
    return (seq, last) if status == "ok" else tail


_INSERT_MESSAGES = Message.__table__.insert()


def _has_rows(request_id, part, conn):
    return conn.execute(db.select(Message.id).where(
        Message.request_id == request_id, Message.part == part).limit(1)).first() is not None


def save_reply(session_id, model, request_id, reply, status, started_at=None, tail=None,
               conn=None):
    """The reply of a request (once: a second copy is refused and ignored). Returns the
    thread's tail after it, or None if the reply was stored already."""
    message = {"role": "assistant", "content": reply["content"],
               "thinking": reply.get("thinking"), "tool_calls": reply.get("tool_calls")}
    message["tokens"] = count_tokens(message)
    message["logprobs"] = reply.get("logprobs")  # kept with the reply, never sent upstream
    try:
        return append_messages(session_id, model, [message], request_id, status=status,
                               started_at=started_at, tail=tail, first_part=REPLY_PART, conn=conn)
    except Conflict as exc:
        if exc.stored:
            return None
        # The thread moved on since this turn began (its lock expired): append at the new end.
        return append_messages(session_id, model, [message], request_id, status=status,
                               started_at=started_at, first_part=REPLY_PART, conn=conn)


def save_lost_reply(session_id, model, request_id, reply):
    """What a request whose worker died had streamed, kept aside marked lost."""
    if reply["content"] or reply.get("thinking") or reply.get("tool_calls"):
        save_reply(session_id, model, request_id, reply, "lost")


def fail_request(request_id):
    """A turn the upstream refused before answering: its messages leave the thread (kept,
    marked failed, without their images, which nobody will see again), so they are never
    replayed."""
    refused = db.session.execute(db.select(Message.id, Message.extra).where(
        Message.request_id == request_id, Message.status == "ok")).all()
    db.session.execute(db.update(Message).where(Message.request_id == request_id,
                                                Message.status == "ok")
                       .values(status="failed", seq=None, chain=None)
                       .execution_options(synchronize_session=False))
    for row in refused:
        if (row.extra or {}).get("images"):
            extra = {k: v for k, v in row.extra.items() if k != "images"}
            db.session.execute(db.update(Message).where(Message.id == row.id)
                               .values(extra=extra or None)
                               .execution_options(synchronize_session=False))
    db.session.commit()

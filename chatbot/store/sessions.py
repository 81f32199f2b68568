"""Reading and appending to sessions. Appends are inserts: a turn never rewrites history."""
from chatbot.store.models import ChatSession, Message, db, utcnow

MESSAGE_FIELDS = ("images", "tool_calls", "thinking", "tool_name")


def open_session(session_id):
    """Get or create the session and mark it used (an archived session comes back)."""
    session = db.session.get(ChatSession, session_id)
    if session is None:
        session = ChatSession(id=session_id, meta={})
        db.session.add(session)
    session.last_access = utcnow()
    session.archived = False
    db.session.commit()
    return session


def load_thread(session_id, model):
    """The messages of one model's thread that the model should see again."""
    rows = db.session.execute(
        db.select(Message).where(Message.session_id == session_id, Message.model == model,
                                 Message.status == "ok").order_by(Message.id)
    ).scalars()
    return [row.as_chat() for row in rows]


def thread_length(session_id, model=None):
    query = db.select(db.func.count()).select_from(Message).where(Message.session_id == session_id)
    if model:
        query = query.where(Message.model == model)
    return db.session.execute(query).scalar_one()


def append_messages(session_id, model, messages, request_id, status="ok", started_at=None):
    """Insert messages ({role, content, tokens, ...}) at the end of the thread."""
    for message in messages:
        extra = {k: message[k] for k in MESSAGE_FIELDS if message.get(k)}
        db.session.add(Message(
            session_id=session_id, model=model, role=message["role"],
            content=message.get("content") or "", extra=extra or None,
            tokens=message.get("tokens", 0), status=status, request_id=request_id,
            started_at=started_at,
        ))
    db.session.commit()

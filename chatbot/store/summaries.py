"""Summaries of a thread's dropped history (CONTEXT_STRATEGY=summarize): the newest one a turn
sends, the messages a new one must cover, and saving it."""
from chatbot.store.models import Message, Summary, db, utcnow

SPAN_LIMIT = 400  # messages of a span read at most (the newest): more could not fit one request


def latest_summary(session_id, model):
    """The thread's newest summary ({id, content, tokens, first_seq, last_seq}), or None."""
    row = db.session.execute(
        db.select(Summary).where(Summary.session_id == session_id, Summary.model == model)
        .order_by(Summary.last_seq.desc(), Summary.id.desc()).limit(1)).scalars().first()
    return as_dict(row) if row else None


def as_dict(row):
    return {"id": row.id, "content": row.content, "tokens": row.tokens,
            "first_seq": row.first_seq, "last_seq": row.last_seq}


def span_messages(session_id, model, first_seq, last_seq, skip=()):
    """The thread's ok messages first_seq..last_seq, oldest first (at most the newest
    SPAN_LIMIT), without the seqs in `skip` (the system messages sent anyway)."""
    rows = db.session.execute(
        db.select(Message.role, Message.content, Message.tokens, Message.seq)
        .where(Message.session_id == session_id, Message.model == model,
               Message.seq.between(first_seq, last_seq))
        .order_by(Message.seq.desc()).limit(SPAN_LIMIT)).all()
    return [{"role": r.role, "content": r.content, "tokens": r.tokens, "seq": r.seq}
            for r in reversed(rows) if r.seq not in skip]


def save_summary(session_id, model, first_seq, last_seq, content, tokens, previous_id=None,
                 request_id=None):
    """Store a summary (committed at once: it stays valid whatever becomes of the turn)."""
    row = Summary(session_id=session_id, model=model, first_seq=first_seq, last_seq=last_seq,
                  content=content, tokens=tokens, previous_id=previous_id,
                  request_id=request_id, created_at=utcnow())
    db.session.add(row)
    db.session.commit()
    return as_dict(row)


def newest_per_model(session_id):
    """{model: the newest summary} of a session, for the sessions API and exports."""
    rows = db.session.execute(
        db.select(Summary).where(Summary.session_id == session_id)
        .order_by(Summary.model, Summary.last_seq, Summary.id)).scalars()
    return {row.model: row for row in rows}  # the last of each model wins

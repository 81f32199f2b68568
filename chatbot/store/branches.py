"""A thread as a tree. Each ok message has its place on its path (`pos`) and its parent's
chained hash (`prev_chain`; siblings share it). One path is active: its messages have
seq = pos, and it is what a turn replays (everything in chatbot.store.sessions reads only it).
A branch off it keeps its messages with seq NULL, so a thread's reads cost what they did.

A request whose messages start with the active path's first k messages and then differ (an edit
of message k+1), or end there while the path goes on (a regenerate of message k+1), starts a
branch at k+1 (for k = 1, only while the path is one turn: later a lone message equal to the
first is a new turn of a client that sends only what is new): the path's messages from k+1 on
step aside, and the turn is stored in their place. Switching branch makes a message's path the
active one again."""
from chatbot.store.models import Message, Summary, db
from chatbot.store.sessions import chain


def resend_point(session_id, model, messages, tail, conn=None, whole=False):
    """(tail, fork) for a request's `messages` against the active path whose newest message is
    `tail` (seq, chain): ((k, chain of k), k) when it starts a branch at k+1, else (tail, None)
    (it extends the path, or is all new). `whole`: the client says they are the whole
    conversation (the chat page's edit and regenerate), so a branch starts wherever they
    differ, at the first message too."""
    length, stored = tail
    if not length or not messages:
        return tail, None
    chains, running = [], ""
    for message in messages[:length]:
        running = chain(running, message.get("role"), message.get("content"))
        chains.append(running)
    if len(messages) >= length and chains[-1] == stored:
        return tail, None  # the whole path, then what is new
    rows = (conn or db.session).execute(
        db.select(Message.seq, Message.chain).where(
            Message.session_id == session_id, Message.model == model, Message.seq.is_not(None),
            Message.seq <= len(chains), Message.chain.in_(set(chains)))).all()
    k = max((r.seq for r in rows if chains[r.seq - 1] == r.chain), default=0)
    # One message equal to the thread's first is a resend only while the thread is one turn:
    # later, it is a client that sends only its new message, saying the same thing again.
    if k >= 2 or (k == 1 and (length <= 2 or whole)):
        return (k, chains[k - 1]), k
    return ((0, ""), 0) if whole else (tail, None)


def fork(session_id, model, k, conn=None):
    """Step the active path's messages after k aside (not committed: the turn's append
    commits it), and forget the summaries that covered any of them."""
    conn = conn or db.session
    where = (Message.session_id == session_id, Message.model == model)
    conn.execute(db.update(Message).where(*where, Message.seq > k).values(seq=None)
                 .execution_options(synchronize_session=False))
    conn.execute(db.delete(Summary).where(Summary.session_id == session_id, Summary.model == model,
                                          Summary.last_seq > k)
                 .execution_options(synchronize_session=False))


def siblings(session_id, rows):
    """{row id: {"ids": [...], "count": n}} for the ok rows given: every message sharing
    its parent, oldest first."""
    on_path = [r for r in rows if r.prev_chain is not None]
    if not on_path:
        return {}
    found = db.session.execute(
        db.select(Message.id, Message.model, Message.prev_chain).where(
            Message.session_id == session_id, Message.status == "ok",
            Message.prev_chain.in_({r.prev_chain for r in on_path})).order_by(Message.id)).all()
    groups = {}
    for row in found:
        groups.setdefault((row.model, row.prev_chain), []).append(row.id)
    return {r.id: {"ids": ids, "count": len(ids)}
            for r in on_path for ids in [groups.get((r.model, r.prev_chain), [r.id])]}


def ancestry(target):
    """The path from its thread's first message down to the ok message row `target`."""
    where = (Message.session_id == target.session_id, Message.model == target.model,
             Message.status == "ok")
    path, row = [target], target
    while row.prev_chain:  # up to the first message
        row = db.session.execute(db.select(Message).where(
            *where, Message.chain == row.prev_chain, Message.pos == row.pos - 1)
            .order_by(Message.seq.is_(None), Message.id.desc()).limit(1)).scalar_one()
        path.insert(0, row)
    return path


def switch(session_id, message_id):
    """Make the path through message `message_id` the active one: its ancestors, itself, and
    below it the newest child at each step. Returns the message's model, or None if the
    session has no such ok message."""
    target = db.session.execute(db.select(Message).where(
        Message.session_id == session_id, Message.id == message_id, Message.status == "ok",
        Message.pos.is_not(None))).scalar_one_or_none()
    if target is None:
        return None
    model = target.model
    where = (Message.session_id == session_id, Message.model == model, Message.status == "ok")
    path, row = ancestry(target), target
    while True:  # down, by the newest child
        row = db.session.execute(db.select(Message).where(*where, Message.prev_chain == row.chain)
                                 .order_by(Message.id.desc()).limit(1)).scalar_one_or_none()
        if row is None:
            break
        path.append(row)
    old = dict(db.session.execute(db.select(Message.seq, Message.id).where(
        Message.session_id == session_id, Message.model == model, Message.seq.is_not(None))).all())
    same = next((r.pos for r in path if old.get(r.pos) != r.id), len(path) + 1) - 1
    db.session.execute(db.update(Message).where(
        Message.session_id == session_id, Message.model == model, Message.seq > same)
        .values(seq=None).execution_options(synchronize_session=False))
    db.session.flush()
    for row in path[same:]:
        db.session.execute(db.update(Message).where(Message.id == row.id).values(seq=row.pos)
                           .execution_options(synchronize_session=False))
    db.session.execute(db.delete(Summary).where(
        Summary.session_id == session_id, Summary.model == model, Summary.last_seq > same)
        .execution_options(synchronize_session=False))
    db.session.commit()
    return model

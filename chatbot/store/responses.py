"""The Responses API's stored responses (/v1/responses): written once a response has ended,
read back, deleted, and the point in its session's thread where a response continued by
`previous_response_id` picks up."""
from chatbot.store.branches import ancestry
from chatbot.store.models import Message, StoredResponse, db, utcnow
from chatbot.store.sessions import thread_tail

# Written by whoever saw the response end first (its client's web, a background keeper, a
# client that came back): the same object each time, so the last write wins harmlessly. Only
# into a session that exists: a response ended before its turn stored anything is not kept.
_SAVE = db.text(
    "INSERT INTO responses (id, request_id, session_id, owner, model, status, body, created_at) "
    "SELECT :id, :request_id, :session_id, :owner, :model, :status, :body, :now "
    "WHERE EXISTS (SELECT 1 FROM sessions WHERE id = :session_id) "
    "ON CONFLICT (id) DO UPDATE SET status = :status, body = :body "
    "WHERE responses.status != 'deleted'"
).bindparams(db.bindparam("body", type_=db.JSON), db.bindparam("now", type_=db.DateTime))


def save(body, request_id, session_id, owner):
    db.session.execute(_SAVE, {"id": body["id"], "request_id": request_id,
                               "session_id": session_id, "owner": owner, "model": body["model"],
                               "status": body["status"], "body": body, "now": utcnow()})
    db.session.commit()


def get(response_id):
    return db.session.get(StoredResponse, response_id)


DELETED = "deleted"


def forget(row):
    """Delete a response: its body goes; its id stays as deleted, so that it is not found
    again while the line still remembers its request (the turn stays in its thread)."""
    row.status, row.body = DELETED, {"id": row.id}
    db.session.commit()


def continuation(row, model):
    """What a turn continuing the response `row` with `model` must send before its new input:
    None when the response's reply ends that model's thread (the stored thread is the
    history), else that reply's path from the first message (as Ollama messages), sent whole
    to start a branch there (a response before the newest, or another model's thread)."""
    reply = db.session.execute(
        db.select(Message).where(Message.session_id == row.session_id,
                                 Message.request_id == row.request_id, Message.status == "ok",
                                 Message.pos.is_not(None))
        .order_by(Message.id.desc()).limit(1)).scalar_one_or_none()
    if reply is None:  # nothing of it was kept: the thread as it is
        return None
    if reply.model == model and reply.seq is not None and \
            thread_tail(row.session_id, model) == (reply.seq, reply.chain):
        return None
    return [message.as_chat() for message in ancestry(reply)]

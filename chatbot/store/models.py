"""Tables: one row per session, one row per message of a session's per-model thread."""
from datetime import datetime, timezone

from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()


def utcnow():
    return datetime.now(timezone.utc).replace(tzinfo=None)


class ChatSession(db.Model):
    __tablename__ = "sessions"

    id = db.Column(db.String(36), primary_key=True)
    title = db.Column(db.String(200))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_access = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)
    archived = db.Column(db.Boolean, nullable=False, default=False)
    meta = db.Column(db.JSON, nullable=False, default=dict)
    # The API key (its name) that created the session; None: made while keys were off.
    owner = db.Column(db.String(100), index=True)


class ApiKey(db.Model):
    """A key made with `flask keys create`; only its SHA-256 is kept."""
    __tablename__ = "api_keys"

    name = db.Column(db.String(100), primary_key=True)
    key_hash = db.Column(db.String(64), nullable=False, unique=True)
    admin = db.Column(db.Boolean, nullable=False, default=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)


# A message's fields beside role and content, and their JSON types: Ollama's api.Message
# (thinking, images, tool_calls with their ids and arguments' key order, tool_name,
# tool_call_id), and a reply's logprobs.
EXTRA_FIELDS = {"thinking": str, "images": list, "tool_calls": list, "tool_name": str,
                "tool_call_id": str, "logprobs": list}


class Message(db.Model):
    __tablename__ = "messages"
    __table_args__ = (
        db.Index("ix_messages_thread", "session_id", "model", "id"),
        # Finds a thread's system messages without scanning the thread.
        db.Index("ix_messages_system", "session_id", "model", "id",
                 sqlite_where=db.text("role = 'system'"), postgresql_where=db.text("role = 'system'")),
        # One turn at a time per thread: two turns can never take the same position.
        db.Index("ux_messages_thread_seq", "session_id", "model", "seq", unique=True,
                 sqlite_where=db.text("seq IS NOT NULL"), postgresql_where=db.text("seq IS NOT NULL")),
        # At most one copy of a request's rows: a duplicated or late write is refused.
        db.Index("ux_messages_request_part", "request_id", "part", unique=True),
        db.Index("ix_messages_children", "session_id", "model", "prev_chain"),
    )

    id = db.Column(db.Integer, primary_key=True, autoincrement=True)
    session_id = db.Column(db.String(36), db.ForeignKey("sessions.id", ondelete="CASCADE"),
                           nullable=False)
    model = db.Column(db.String(200), nullable=False)
    role = db.Column(db.String(16), nullable=False)
    content = db.Column(db.Text, nullable=False, default="")
    # Fields Ollama carries beside content (EXTRA_FIELDS), kept in the order they came.
    extra = db.Column(db.JSON)
    tokens = db.Column(db.Integer, nullable=False, default=0)
    # ok | cancelled | failed | lost: only ok messages are replayed to the model.
    status = db.Column(db.String(16), nullable=False, default="ok")
    # Position in the model's thread (ok messages only) and a hash chained over the thread's
    # (role, content) pairs: the newest row alone tells whether a resent conversation starts
    # with the stored one, so no turn ever needs the whole history.
    seq = db.Column(db.Integer)
    chain = db.Column(db.String(64))
    # The thread is a tree (an edit or a regenerate starts a branch): an ok message's place on
    # its path and its parent's chain (its siblings share it). Messages of the active path
    # have seq = pos; those of a branch off it keep pos, with seq NULL.
    pos = db.Column(db.Integer)
    prev_chain = db.Column(db.String(64))
    request_id = db.Column(db.String(36))
    # The row's place among its request's rows: the request's new messages, then the reply.
    part = db.Column(db.Integer)
    started_at = db.Column(db.DateTime)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    def as_chat(self):
        """The Ollama message this row stores."""
        return {"role": self.role, "content": self.content, **(self.extra or {})}


class Summary(db.Model):
    """What a thread's messages first_seq..last_seq said, in short (CONTEXT_STRATEGY=summarize):
    sent as one system message in their place. A summary extends the one before it
    (`previous_id`), so history is summarized once; a turn uses the newest. Kept apart from
    the messages: it is never replayed as one of them."""
    __tablename__ = "summaries"
    __table_args__ = (db.Index("ix_summaries_thread", "session_id", "model", "last_seq"),)

    id = db.Column(db.Integer, primary_key=True, autoincrement=True)
    session_id = db.Column(db.String(36), db.ForeignKey("sessions.id", ondelete="CASCADE"),
                           nullable=False)
    model = db.Column(db.String(200), nullable=False)
    first_seq = db.Column(db.Integer, nullable=False)
    last_seq = db.Column(db.Integer, nullable=False)
    content = db.Column(db.Text, nullable=False)  # the system message as sent
    tokens = db.Column(db.Integer, nullable=False)
    previous_id = db.Column(db.Integer)
    request_id = db.Column(db.String(36))  # the turn that made it
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)


class Document(db.Model):
    """A document a session searches (RAG): its chunks are in document_chunks."""
    __tablename__ = "documents"
    __table_args__ = (db.Index("ix_documents_session", "session_id"),)

    id = db.Column(db.Integer, primary_key=True, autoincrement=True)
    session_id = db.Column(db.String(36), db.ForeignKey("sessions.id", ondelete="CASCADE"),
                           nullable=False)
    name = db.Column(db.String(255), nullable=False)
    content_type = db.Column(db.String(100), nullable=False)
    bytes = db.Column(db.Integer, nullable=False)
    chunk_count = db.Column(db.Integer, nullable=False)
    # The model its vectors come from: a query is embedded with the same one.
    embed_model = db.Column(db.String(200), nullable=False)
    dim = db.Column(db.Integer, nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)


class DocumentChunk(db.Model):
    """A piece of a document (by tokens, overlapping the next) and its unit vector (float32
    bytes). session_id is repeated so a turn finds its session's chunks in one indexed read."""
    __tablename__ = "document_chunks"
    __table_args__ = (db.Index("ix_document_chunks_session", "session_id"),
                      db.Index("ix_document_chunks_document", "document_id"))

    id = db.Column(db.Integer, primary_key=True, autoincrement=True)
    document_id = db.Column(db.Integer, db.ForeignKey("documents.id", ondelete="CASCADE"),
                            nullable=False)
    session_id = db.Column(db.String(36), db.ForeignKey("sessions.id", ondelete="CASCADE"),
                           nullable=False)
    idx = db.Column(db.Integer, nullable=False)
    content = db.Column(db.Text, nullable=False)
    tokens = db.Column(db.Integer, nullable=False)
    vector = db.Column(db.LargeBinary, nullable=False)


class StoredResponse(db.Model):
    """A response of the Responses API (/v1/responses), as its client got it once it ended:
    kept so that it can be read again and continued (previous_response_id). Its turn is in its
    session's thread like every other; this row only names it."""
    __tablename__ = "responses"

    id = db.Column(db.String(80), primary_key=True)  # "resp_" + the request's id
    request_id = db.Column(db.String(64), nullable=False, index=True)
    session_id = db.Column(db.String(36), db.ForeignKey("sessions.id", ondelete="CASCADE"),
                           nullable=False, index=True)
    owner = db.Column(db.String(100))
    model = db.Column(db.String(200), nullable=False)
    status = db.Column(db.String(16), nullable=False)
    body = db.Column(db.JSON, nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)

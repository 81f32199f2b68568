"""What each owner (a key's name) stores, in bytes: its sessions' messages (text and the
fields beside it, images included), summaries, documents' chunks with their vectors, and the
Responses API's stored responses.
Read by aggregate queries, so it is what the database holds, whoever wrote it."""
from chatbot.store.models import ChatSession, DocumentChunk, Message, StoredResponse, Summary, db

_PARTS = (  # (table, the bytes of one row)
    (Message, db.func.length(Message.content)
     + db.func.coalesce(db.func.length(db.cast(Message.extra, db.Text)), 0)),
    (Summary, db.func.length(Summary.content)),
    (DocumentChunk, db.func.length(DocumentChunk.content) + db.func.length(DocumentChunk.vector)),
    (StoredResponse, db.func.length(db.cast(StoredResponse.body, db.Text))),
)


def bytes_used(owners=None):
    """{owner: bytes} of every owner with something stored, or of `owners` only."""
    used = {}
    for table, size in _PARTS:
        query = (db.select(ChatSession.owner, db.func.sum(size))
                 .join(ChatSession, ChatSession.id == table.session_id)
                 .where(ChatSession.owner.is_not(None)).group_by(ChatSession.owner))
        if owners is not None:
            query = query.where(ChatSession.owner.in_(owners))
        for owner, total in db.session.execute(query):
            used[owner] = used.get(owner, 0) + int(total or 0)
    return used

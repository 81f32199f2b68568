"""Reading and writing a session's documents and their chunks. A document is stored whole or
not at all: its row and every chunk in one commit."""
from chatbot.store.models import Document, DocumentChunk, db, utcnow
from chatbot.store.sessions import touch_session


def add_document(session_id, owner, name, content_type, size, model, chunks, vectors):
    """Store a document: `chunks` [(text, tokens)] and their `vectors` (float32 unit vectors,
    one row each). The session is made (owned by `owner`) if it does not exist yet."""
    touch_session(session_id, owner)
    doc = Document(session_id=session_id, name=name, content_type=content_type, bytes=size,
                   chunk_count=len(chunks), embed_model=model, dim=int(vectors.shape[1]),
                   created_at=utcnow())
    db.session.add(doc)
    db.session.flush()  # its id, for the chunks
    db.session.execute(db.insert(DocumentChunk), [
        {"document_id": doc.id, "session_id": session_id, "idx": i, "content": text,
         "tokens": tokens, "vector": vector.tobytes()}
        for i, ((text, tokens), vector) in enumerate(zip(chunks, vectors))])
    db.session.commit()
    return describe(doc)


def describe(doc):
    return {"id": doc.id, "name": doc.name, "content_type": doc.content_type,
            "bytes": doc.bytes, "chunks": doc.chunk_count, "embed_model": doc.embed_model,
            "created_at": doc.created_at.isoformat() + "Z"}


def count_documents(session_id):
    return db.session.execute(db.select(db.func.count()).select_from(Document)
                              .where(Document.session_id == session_id)).scalar_one()


def list_documents(session_id):
    rows = db.session.execute(db.select(Document).where(Document.session_id == session_id)
                              .order_by(Document.id)).scalars()
    return [describe(doc) for doc in rows]


def remove_document(session_id, document_id):
    """Delete one of the session's documents with its chunks; its description, or None if the
    session has no such document."""
    doc = db.session.execute(db.select(Document).where(
        Document.session_id == session_id, Document.id == document_id)).scalar_one_or_none()
    if doc is None:
        return None
    gone = describe(doc)
    # The chunks explicitly: SQLite enforces ON DELETE CASCADE only with its pragma on.
    db.session.execute(db.delete(DocumentChunk).where(DocumentChunk.document_id == doc.id))
    db.session.delete(doc)
    db.session.commit()
    return gone


def session_chunks(session_id):
    """The chunks of the session's newest embedding model (documents embedded with another
    one cannot be compared with its query): [{document, document_id, chunk, content, vector}]
    and the model; ([], None) for a session without documents (one indexed read)."""
    model = db.session.execute(
        db.select(Document.embed_model).where(Document.session_id == session_id)
        .order_by(Document.id.desc()).limit(1)).scalar_one_or_none()
    if model is None:
        return [], None
    rows = db.session.execute(
        db.select(Document.name, Document.id, DocumentChunk.idx, DocumentChunk.content,
                  DocumentChunk.vector)
        .join(Document, Document.id == DocumentChunk.document_id)
        .where(DocumentChunk.session_id == session_id, Document.embed_model == model)
        .order_by(DocumentChunk.id)).all()
    return [{"document": r.name, "document_id": r.id, "chunk": r.idx, "content": r.content,
             "vector": r.vector} for r in rows], model

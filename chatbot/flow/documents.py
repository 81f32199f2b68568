"""The nodes of retrieval (RAG), in the style of chatbot.flow.nodes: reads in `prep`, a pure
`exec` or one upstream call, writes in `post`.

Indexing (the index flow, run in the web request that uploads a document; reading, chunking
and storing off the web's loop, chatbot.ops.offload), shared store:
  upload   {session_id, owner, name, data: bytes, type}   limits {size, overlap, max_bytes,
           max_chunks, max_chars, max_pages, max_seconds, max_documents}   model: EMBED_MODEL
           post: how an embedding is asked, post(path, body) -> JSON (through the line, or a
           host)
  chunks   [(text, tokens)] (ReadDocument)   vectors (EmbedChunks)   document (StoreDocument)

Retrieve (the chat flow, before BuildContext) writes `retrieved`: the session's chunks
nearest the newest user message, best first, each {document, document_id, chunk, score,
content}.
"""
import numpy as np
from flask import current_app
from pocketflow import BatchNode, Node

from chatbot.flow import rag
from chatbot.ops import offload
from chatbot.store import documents as stored
from chatbot.upstream import UpstreamError


class ReadDocument(Node):
    def prep(self, shared):
        upload, limits = shared["upload"], shared["limits"]
        return upload, limits, stored.count_documents(upload["session_id"])

    def exec(self, prep_res):
        upload, limits, held = prep_res
        if held >= limits["max_documents"]:
            raise rag.TooLarge(f"too many documents: the session has {held}, at most "
                               f"{limits['max_documents']} (MAX_DOCUMENTS_PER_SESSION); "
                               "remove one first")
        return offload.run(self.read, upload, limits)  # seconds of CPU for a big PDF or text

    @staticmethod
    def read(upload, limits):
        text = rag.read_text(upload["data"], upload["type"], limits["max_bytes"],
                                   limits["max_chars"], limits["max_pages"], limits["max_seconds"])
        return rag.chunk(text, limits["size"], limits["overlap"], limits["max_chunks"])

    def post(self, shared, prep_res, exec_res):
        shared["chunks"] = exec_res


class EmbedChunks(BatchNode):
    """One /api/embed call per batch of chunks; any error ends the flow before anything is
    stored."""

    def prep(self, shared):
        texts = [text for text, _ in shared["chunks"]]
        return [(shared["post"], shared["model"], texts[i:i + rag.EMBED_BATCH])
                for i in range(0, len(texts), rag.EMBED_BATCH)]

    def exec(self, batch):
        return rag.embed(*batch)

    def post(self, shared, prep_res, exec_res):
        shared["vectors"] = np.vstack(exec_res)


class StoreDocument(Node):
    def prep(self, shared):
        upload = shared["upload"]
        return (upload["session_id"], upload["owner"], upload["name"], upload["type"],
                len(upload["data"]), shared["model"], shared["chunks"], shared["vectors"])

    def exec(self, prep_res):
        return prep_res

    def post(self, shared, prep_res, exec_res):
        shared["document"] = offload.run(stored.add_document, *exec_res)  # rows and vectors


class Retrieve(Node):
    """The session's chunks nearest the request's newest user message. A session without
    documents costs one indexed read and no embed call; its reply stays exactly Ollama's."""

    def prep(self, shared):
        job = shared["job"]
        query = next((m.get("content") for m in reversed(job["messages"])
                      if m.get("role") == "user"), None)
        if job.get("fresh") or not isinstance(query, str) or not query.strip():
            return None
        chunks, model = stored.session_chunks(job["session_id"])
        if not chunks:
            return None
        return shared["upstream"], model, query, chunks, current_app.config["RAG_TOP_K"]

    def exec(self, prep_res):
        if prep_res is None:
            return []
        upstream, model, query, chunks, k = prep_res
        try:
            vector = rag.embed(upstream.post_json, model, [query])[0]
        except UpstreamError as exc:
            return {"status": exc.status,
                    "error": f"could not search the session's documents: {exc.error}"}
        matrix = rag.matrix([c["vector"] for c in chunks], len(vector))
        return [{**{f: chunks[row][f] for f in ("document", "document_id", "chunk", "content")},
                 "score": round(score, 4)}
                for row, score in rag.rank(vector, matrix, k)]

    def post(self, shared, prep_res, exec_res):
        if isinstance(exec_res, dict):  # nothing stored yet, nothing sent: the client hears why
            shared["reply"] = {"status": "failed", "error": exec_res, "final": None, "chunks": 0}
            return "failed"
        shared["retrieved"] = exec_res

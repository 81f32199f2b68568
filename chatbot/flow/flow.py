"""The flow the worker runs for every chat and generate request, streamed or not, and the one
that indexes an uploaded document."""
import logging

from flask import current_app
from pocketflow import Flow

from chatbot.flow import rag
from chatbot.ops import timing
from chatbot.upstream import routing

from chatbot.flow.documents import EmbedChunks, ReadDocument, Retrieve, StoreDocument
from chatbot.flow.nodes import (Begin, BuildContext, LoadThread, SizeWindow, StoreRequest,
                                TakePrompt)
from chatbot.flow.reply import (Calibrate, CallChat, CallEmbed, CallGenerate, Finish,
                                ShrinkContext, StoreReply)
from chatbot.flow.summarize import SummarizeDropped
from chatbot.flow.title import NameSession


log = logging.getLogger(__name__)


def create_chat_flow():
    begin = Begin()
    # chat: the stored thread plus the new messages (and the session's document chunks
    # nearest the question), fitted into the window.
    load, build, store_chat, finish_chat = LoadThread(), BuildContext(), StoreRequest(), Finish()
    size, retrieve = SizeWindow(), Retrieve()
    # Calibration goes with the request's metrics, sent in the ending's round trip.
    call_chat, store_reply, shrink = CallChat(), StoreReply(), ShrinkContext()
    begin - "chat" >> load >> size >> retrieve >> build >> store_chat >> call_chat \
        >> store_reply >> Calibrate() >> finish_chat
    finish_chat >> NameSession()  # AUTO_TITLES: a session's first reply makes a title owed
    # The upstream refused the context as too long: leave out more history, send it again.
    call_chat - "too_long" >> shrink >> call_chat
    shrink - "give_up" >> store_reply
    size - "unsupported" >> finish_chat  # an embedding model: a 400, as from Ollama
    store_chat - "conflict" >> load  # another turn took the thread's next place: start over
    build - "too_long" >> finish_chat  # nothing stored, nothing sent: the client gets a 400
    retrieve - "failed" >> finish_chat  # the documents could not be searched: likewise
    summarize = SummarizeDropped()
    build - "summarize" >> summarize >> store_chat  # CONTEXT_STRATEGY=summarize
    summarize - "stopped" >> finish_chat  # cancelled or overdue while summarizing
    # generate: single-turn, its own endpoint.
    store_generate = StoreRequest()
    begin - "generate" >> TakePrompt() >> store_generate >> CallGenerate() >> StoreReply() >> Finish()
    store_generate - "conflict" >> store_generate
    # embed: one upstream call in its asker's turn, nothing stored.
    begin - "embed" >> CallEmbed() >> Finish()
    return TimedFlow(start=begin)


def create_index_flow():
    """An uploaded document: its text in token chunks, embedded in batches, stored at once."""
    read = ReadDocument()
    read >> EmbedChunks() >> StoreDocument()
    return Flow(start=read)


def index_document(session_id, name, data, declared_type, owner=None, post=None):
    """Read, chunk, embed and store a document in the session (made if missing), through the
    index flow; its description. Shared by the REST API and `flask docs`. The embeddings are
    asked by `post(path, body)` (the API's: jobs of the asker in the fair line), else straight
    of a host that has EMBED_MODEL. Embedding errors (model missing, host down) propagate with
    nothing stored."""
    config = current_app.config
    model = config["EMBED_MODEL"]
    if post is None:
        router = routing.get()
        post = router.upstream(router.candidates(model)[0]).post_json
    name = (name or "").replace("\x00", "").strip()[:255] or "document"
    shared = {"upload": {"session_id": session_id, "owner": owner, "name": name, "data": data,
                         "type": rag.content_type(name, declared_type)},
              "limits": {"size": config["RAG_CHUNK_TOKENS"], "overlap": config["RAG_CHUNK_OVERLAP"],
                         "max_bytes": config["MAX_DOCUMENT_BYTES"],
                         "max_chunks": config["MAX_DOCUMENT_CHUNKS"],
                         "max_chars": config["MAX_DOCUMENT_TEXT_CHARS"],
                         "max_pages": config["MAX_PDF_PAGES"],
                         "max_seconds": config["MAX_PDF_SECONDS"],
                         "max_documents": config["MAX_DOCUMENTS_PER_SESSION"]},
              "model": model, "post": post}
    create_index_flow().run(shared)
    log.info("document %s added to session %s: %s chunks", shared["document"]["id"],
             session_id, shared["document"]["chunks"])
    return shared["document"]


class TimedFlow(Flow):
    """PocketFlow's own loop, marking when each node ends (shared["marks"], see chatbot.ops.timing).
    It runs the nodes themselves, not copies: their state lives in `shared`, and a worker runs
    one request at a time (copying ten nodes a turn cost a twentieth of the worker's time)."""

    def _orch(self, shared, params=None):
        marks = shared.setdefault("marks", {})
        curr, p, last_action = self.start_node, (params or {**self.params}), None
        while curr:
            curr.set_params(p)
            last_action = curr._run(shared)
            marks[type(curr).__name__] = timing.now()
            curr = self.get_next_node(curr, last_action)
        return last_action

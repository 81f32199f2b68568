"""Documents and retrieval (RAG): three documents on different topics go into a session (JSON
Markdown, a multipart text file, a PDF), a question about a fact in only one of them brings
that chunk first, the reply's final chunk names it in `sources`, another key sees nothing,
and bad uploads or a failing upstream store nothing. Embeddings come from the bundled engine."""
import json
import uuid

import numpy as np
import pytest
import requests

from chatbot import create_app, store
from chatbot.flow.flow import index_document
from chatbot.flow.context import SOURCES, sources_message
from chatbot.flow.documents import Retrieve
from chatbot.flow.nodes import BuildContext
from chatbot.store import db
from chatbot.store import documents as stored
from chatbot.tokens import count_tokens
from chatbot.upstream import Upstream
from tests.conftest import MODEL, OPTIONS, serve

EMBED = "all-minilm"  # the bundled engine's (384 dimensions)
A, B = "key-alice-0123456789", "key-bob-0123456789"
# Small chunks, so each document is several chunks and the ranking picks one of them.
SETTINGS = {"RAG_CHUNK_TOKENS": 60, "RAG_CHUNK_OVERLAP": 10, "EMBED_MODEL": EMBED}

VOLCANO = """# Mount Kelderath

Mount Kelderath is a stratovolcano on the island of Pellumbra, in the cold southern ocean.
Its slopes are covered with black basalt, lichens and moss, and seabirds nest on its cliffs.

## Eruptions

The volcano last erupted in the year 1874. The eruption of Mount Kelderath lasted nineteen
days and its ash fell on ships two hundred kilometres away. Its crater lake is bright green.

## Visiting

Hikers reach the rim in about six hours from the harbour village. Guides recommend warm
clothes, because the wind on the summit is strong and the weather changes quickly.
"""
BREAD = """Baking sourdough bread at home

A sourdough starter is a mixture of flour and water in which wild yeast and lactic acid
bacteria live. Feed the starter every day with equal weights of flour and water.

To make the dough, mix flour, water, salt and a spoon of active starter, fold it every half
hour, and let it rise overnight in a cool kitchen. Bake in a hot oven with a lid for forty
minutes, then without the lid until the crust is deep brown and crackles.
"""
CHESS = ["The history of chess openings",
         "The Sicilian Defence answers the king's pawn with the c-pawn.",
         "The Queen's Gambit offers a pawn to gain control of the centre.",
         "Opening theory in chess grew through the nineteenth century,",
         "when masters published analysis of games in books and magazines.",
         "The Ruy Lopez is named after a Spanish priest of the sixteenth century."]
QUESTION = "In which year did Mount Kelderath volcano last erupt?"


def tiny_pdf(lines):
    """A one-page PDF with these lines of text (Helvetica), built by hand."""
    def esc(text):
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    content = "BT /F1 11 Tf 72 720 Td 14 TL " + " ".join(f"({esc(l)}) '" for l in lines) + " ET"
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               "/Resources << /Font << /F1 5 0 R >> >> >>",
               f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n"
            "%%EOF\n").encode()
    return out


def bearer(key):
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture(scope="module")
def rag(stack):
    """The stack's database, worker and engine, served by an app embedding with EMBED."""
    app = stack.app_with(SETTINGS)
    server, url = serve(app)
    yield app, url
    server.shutdown()


@pytest.fixture(scope="module")
def keyed(stack):
    app = stack.app_with({"API_KEYS": f"alice={A},bob={B}", "RATE_LIMIT": "1000/minute", **SETTINGS})
    server, url = serve(app)
    yield app, url
    server.shutdown()


def upload_three(url, sid, key=None):
    """The three documents, each a different way; their descriptions."""
    headers = bearer(key)
    made = [requests.post(f"{url}/api/sessions/{sid}/documents", headers=headers, timeout=300,
                          json={"name": "kelderath.md", "content": VOLCANO}),
            requests.post(f"{url}/api/sessions/{sid}/documents", headers=headers, timeout=300,
                          files={"file": ("sourdough.txt", BREAD.encode(), "text/plain")}),
            requests.post(f"{url}/api/sessions/{sid}/documents", headers=headers, timeout=300,
                          files={"file": ("chess.pdf", tiny_pdf(CHESS), "application/pdf")})]
    for resp in made:
        assert resp.status_code == 201, resp.text
    return [resp.json() for resp in made]


def chat(url, sid, content, key=None, stream=False):
    body = {"model": MODEL, "stream": stream, "options": OPTIONS, "session_id": sid,
            "messages": [{"role": "user", "content": content}]}
    return requests.post(url + "/api/chat", json=body, headers=bearer(key), timeout=300,
                         stream=stream)


def fact_chunk(app, sid):
    """(document id, chunk index) of the chunk that holds the fact."""
    with app.app_context():
        chunks, _ = stored.session_chunks(sid)
    hits = [(c["document_id"], c["chunk"]) for c in chunks if "1874" in c["content"]]
    assert len(hits) == 1, hits  # the overlap must not copy the fact into a second chunk
    return hits[0]


@pytest.fixture(scope="module")
def three(rag):
    app, url = rag
    sid = str(uuid.uuid4())
    docs = upload_three(url, sid)
    return sid, docs, fact_chunk(app, sid)


def test_three_documents_are_chunked_embedded_and_listed(rag, three, stack):
    app, url = rag
    sid, docs, _ = three
    assert [d["name"] for d in docs] == ["kelderath.md", "sourdough.txt", "chess.pdf"]
    assert [d["content_type"] for d in docs] == ["text/markdown", "text/plain", "application/pdf"]
    assert all(d["chunks"] >= 2 and d["embed_model"] == EMBED for d in docs), docs
    listed = requests.get(f"{url}/api/sessions/{sid}/documents", timeout=30).json()
    assert listed == {"documents": docs}
    with app.app_context():
        chunks, model = stored.session_chunks(sid)
    assert model == EMBED and len(chunks) == sum(d["chunks"] for d in docs)
    assert any("Gambit offers a pawn" in c["content"] for c in chunks)  # the PDF's text was read
    vectors = np.stack([np.frombuffer(c["vector"], dtype=np.float32) for c in chunks])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)  # stored as unit float32
    # The upload made the session, and nothing else: no messages yet.
    assert requests.get(f"{url}/api/sessions/{sid}", timeout=30).status_code == 200
    assert stack.rows(sid) == []


def test_retrieve_puts_the_chunk_with_the_fact_first(rag, three, stack):
    app, _ = rag
    sid, _, (doc_id, index) = three
    shared = {"job": {"session_id": sid, "messages": [{"role": "user", "content": QUESTION}]},
              "upstream": Upstream(stack.env["OLLAMA_HOST"])}
    with app.app_context():
        Retrieve().run(shared)
    ranked = shared["retrieved"]
    assert (ranked[0]["document_id"], ranked[0]["chunk"]) == (doc_id, index), ranked
    assert "1874" in ranked[0]["content"]
    assert len(ranked) == app.config["RAG_TOP_K"]
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)


def test_the_reply_names_its_sources_streamed_or_not(rag, three):
    _, url = rag
    sid, _, (doc_id, index) = three
    whole = chat(url, sid, QUESTION)
    assert whole.status_code == 200, whole.text
    sources = whole.json()["sources"]
    assert sources[0] == {"document": "kelderath.md", "document_id": doc_id, "chunk": index,
                          "score": sources[0]["score"]}
    streamed = chat(url, sid, QUESTION, stream=True)
    lines = [json.loads(line) for line in streamed.iter_lines() if line]
    assert all("sources" not in line for line in lines[:-1])
    assert lines[-1]["done"] and lines[-1]["sources"][0]["document_id"] == doc_id
    # The chunks went to the model: the same question without documents is far shorter.
    bare = chat(url, str(uuid.uuid4()), QUESTION).json()
    assert "sources" not in bare
    assert whole.json()["prompt_eval_count"] > bare["prompt_eval_count"] + 40


def test_a_session_without_documents_is_answered_exactly_as_before(rag, stack):
    _, url = rag
    lines = [json.loads(line) for line in chat(url, None, "Hi", stream=True).iter_lines() if line]
    assert lines[-1]["done"] and "sources" not in lines[-1]


def test_removing_a_document_and_deleting_the_session(rag, stack):
    app, url = rag
    sid = str(uuid.uuid4())
    doc = requests.post(f"{url}/api/sessions/{sid}/documents", timeout=300,
                        json={"name": "bread.txt", "content": BREAD}).json()
    gone = requests.delete(f"{url}/api/sessions/{sid}/documents/{doc['id']}", timeout=30)
    assert gone.status_code == 200 and gone.json() == {**doc, "deleted": True}
    assert requests.get(f"{url}/api/sessions/{sid}/documents", timeout=30).json() == {
        "documents": []}
    again = requests.delete(f"{url}/api/sessions/{sid}/documents/{doc['id']}", timeout=30)
    assert again.status_code == 404 and again.json() == {"error": f"document {doc['id']} not found"}
    assert stack.count(f"document_chunks WHERE document_id = {doc['id']}") == 0
    huge = requests.delete(f"{url}/api/sessions/{sid}/documents/{2 ** 70}", timeout=30)
    assert huge.status_code == 404
    # A deleted session takes its documents with it.
    requests.post(f"{url}/api/sessions/{sid}/documents", timeout=300,
                  json={"name": "bread.txt", "content": BREAD})
    assert requests.delete(f"{url}/api/sessions/{sid}", timeout=30).status_code == 200
    assert stack.count(f"documents WHERE session_id = '{sid}'") == 0
    assert stack.count(f"document_chunks WHERE session_id = '{sid}'") == 0


def test_another_key_cannot_see_or_search_the_documents(keyed):
    app, url = keyed
    sid = str(uuid.uuid4())
    upload_three(url, sid, A)
    base = f"{url}/api/sessions/{sid}/documents"
    assert requests.get(base, headers=bearer(A), timeout=30).json()["documents"]
    not_found = {"error": f"session '{sid}' not found"}
    for method, kwargs in (("GET", {}), ("POST", {"json": {"content": "mine now"}}),
                           ("DELETE", {})):
        path = base if method != "DELETE" else f"{base}/1"
        resp = requests.request(method, path, headers=bearer(B), timeout=30, **kwargs)
        assert (resp.status_code, resp.json()) == (404, not_found), method
    assert chat(url, sid, QUESTION, B).status_code == 404
    # B's own session with the same question finds none of A's documents.
    own = chat(url, str(uuid.uuid4()), QUESTION, B)
    assert own.status_code == 200 and "sources" not in own.json()
    mine = chat(url, sid, QUESTION, A)
    assert mine.json()["sources"][0]["document"] == "kelderath.md"
    assert requests.get(base, timeout=30).status_code == 401


def post_doc(url, sid=None, **kwargs):
    return requests.post(f"{url}/api/sessions/{sid or uuid.uuid4()}/documents", timeout=60,
                         **kwargs)


@pytest.fixture(scope="module")
def strict(stack):
    app = stack.app_with({**SETTINGS, "MAX_DOCUMENT_BYTES": 2000, "MAX_DOCUMENT_CHUNKS": 3})
    server, url = serve(app)
    yield url
    server.shutdown()


@pytest.mark.parametrize("kwargs, status, error", [
    ({"files": {"file": ("notes.docx", b"PK\x03\x04", "application/octet-stream")}}, 415,
     "unsupported document type 'application/octet-stream': send Markdown, plain text or PDF"),
    ({"files": {"file": ("bad.pdf", b"%PDF-1.4\nnot really a pdf", "application/pdf")}}, 400,
     "not a readable PDF"),
    ({"files": {"file": ("scan.pdf", tiny_pdf([]), "application/pdf")}}, 400,
     "document has no text"),
    ({"files": {"file": ("latin1.txt", "café".encode("latin-1"), "text/plain")}}, 400,
     "document is not UTF-8 text"),
    ({"json": {"name": "empty.md", "content": "  \n"}}, 400, "document has no text"),
    ({"json": {"name": "big.txt", "content": "x" * 2001}}, 413,
     "document too large: 2001 bytes, at most 2000"),
    ({"json": {"name": "long.txt", "content": "word " * 300}}, 400, "document too long"),
    ({"json": {"name": "x.txt"}}, 400, "content is required"),
    ({"json": ["not", "an", "object"]}, 400, "request body must be a JSON object"),
    ({"json": {"content": "hi", "content_type": 7}}, 400, "content_type must be a string"),
])
def test_bad_uploads_are_refused_and_nothing_is_stored(strict, stack, kwargs, status, error):
    before = stack.count("documents"), stack.count("sessions")
    resp = post_doc(strict, **kwargs)
    assert resp.status_code == status and resp.json()["error"].startswith(error), resp.text
    assert (stack.count("documents"), stack.count("sessions")) == before


def test_bad_ids(rag):
    _, url = rag
    resp = requests.get(f"{url}/api/sessions/nope/documents", timeout=30)
    assert (resp.status_code, resp.json()) == (
        400, {"error": "invalid session id 'nope': must be a UUID"})
    assert post_doc(url, "nope", json={"content": "x"}).status_code == 400
    unknown = str(uuid.uuid4())
    assert requests.get(f"{url}/api/sessions/{unknown}/documents", timeout=30).status_code == 404


def test_an_uploads_embeddings_take_their_turn_in_the_line(rag):
    """The embeddings of an upload are its asker's jobs in the fair line (as any /api/embed):
    its channel hears them queued, started and done."""
    _, url = rag
    rid = str(uuid.uuid4())
    events = requests.get(f"{url}/api/events?channel={rid}", stream=True, timeout=60)
    made = post_doc(url, json={"name": "a.md", "content": VOLCANO}, headers={"X-Request-ID": rid})
    assert made.status_code == 201, made.text
    heard = []
    for line in events.iter_lines(decode_unicode=True):
        if line.startswith("event:"):
            heard.append(line.split(":", 1)[1].strip())
            if heard[-1] in ("done", "error"):
                break
    events.close()
    assert heard[0] == "queued" and "started" in heard and heard[-1] == "done", heard


def test_documents_per_session_are_bounded(stack):
    app = stack.app_with({**SETTINGS, "MAX_DOCUMENTS_PER_SESSION": 1})
    server, url = serve(app)
    sid = str(uuid.uuid4())
    try:
        assert post_doc(url, sid, json={"name": "a.md", "content": VOLCANO}).status_code == 201
        before = stack.count("document_chunks")
        second = post_doc(url, sid, json={"name": "b.md", "content": BREAD})
        assert second.status_code == 413 and "MAX_DOCUMENTS_PER_SESSION" in second.json()["error"]
        assert stack.count("document_chunks") == before
        assert post_doc(url, json={"name": "b.md", "content": BREAD}).status_code == 201
    finally:
        server.shutdown()


def test_embedding_errors_are_ollamas_and_store_nothing(stack):
    def app_with(**config):
        return stack.app_with({**SETTINGS, **config})

    import socket
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    before = stack.count("documents"), stack.count("sessions"), stack.count("document_chunks")
    for config, status, error in (({"EMBED_MODEL": "no-such-model"}, 404,
                                   "model 'no-such-model' not found"),
                                  ({"OLLAMA_HOST": closed}, 503, "could not connect to ollama")):
        server, url = serve(app_with(**config))
        try:
            resp = post_doc(url, json={"name": "a.md", "content": VOLCANO})
        finally:
            server.shutdown()
        assert resp.status_code == status and resp.json()["error"].startswith(error), resp.text
    assert (stack.count("documents"), stack.count("sessions"),
            stack.count("document_chunks")) == before


def test_a_turn_whose_documents_cannot_be_searched_fails_and_stores_nothing(rag, stack):
    app, url = rag
    sid = str(uuid.uuid4())
    vectors = np.eye(1, 8, dtype=np.float32)
    with app.app_context():  # a document embedded with a model the host no longer has
        stored.add_document(sid, None, "old.txt", "text/plain", 5, "gone-model", [("hello", 1)],
                            vectors)
    resp = chat(url, sid, QUESTION)
    assert resp.status_code == 404, resp.text
    assert resp.json() == {"error": "could not search the session's documents: "
                                    "model 'gone-model' not found"}
    assert stack.rows(sid) == []


def test_flask_docs_add_list_remove(rag, stack, tmp_path):
    app, _ = rag
    runner = app.test_cli_runner()
    sid = str(uuid.uuid4())
    (tmp_path / "kelderath.md").write_text(VOLCANO)
    (tmp_path / "chess.pdf").write_bytes(tiny_pdf(CHESS))
    added = runner.invoke(args=["docs", "add", sid, str(tmp_path / "kelderath.md"),
                                str(tmp_path / "chess.pdf"), "--json"])
    assert added.exit_code == 0, added.output
    docs = json.loads(added.output)
    assert [d["name"] for d in docs] == ["kelderath.md", "chess.pdf"]
    listed = runner.invoke(args=["docs", "list", sid])
    assert listed.exit_code == 0 and "kelderath.md" in listed.output
    assert "application/pdf" in listed.output
    removed = runner.invoke(args=["docs", "remove", sid, str(docs[0]["id"]), "--json"])
    assert removed.exit_code == 0 and json.loads(removed.output)[0]["name"] == "kelderath.md"
    listed = json.loads(runner.invoke(args=["docs", "list", sid, "--json"]).output)
    assert [d["name"] for d in listed] == ["chess.pdf"]
    (tmp_path / "notes.docx").write_bytes(b"PK")
    refused = runner.invoke(args=["docs", "add", sid, str(tmp_path / "notes.docx")])
    assert refused.exit_code == 1 and "unsupported document type" in refused.output
    missing = runner.invoke(args=["docs", "list", str(uuid.uuid4())])
    assert missing.exit_code == 1 and "not found" in missing.output


def hit(name, chunk, content, score=0.5):
    return {"document": name, "document_id": 1, "chunk": chunk, "content": content,
            "score": score}


def test_the_sources_message_fits_the_window_best_chunk_first():
    retrieved = [hit("a.md", 0, "alpha " * 50), hit("b.md", 3, "beta " * 50),
                 hit("c.md", 1, "gamma " * 50)]
    message, used = sources_message(retrieved, 10_000)
    assert [h["document"] for h in used] == ["a.md", "b.md", "c.md"]
    assert message["content"].startswith(SOURCES) and "[b.md #3]" in message["content"]
    assert message["tokens"] == count_tokens(message)
    room = message["tokens"] - 40  # not enough for the third chunk
    assert [h["document"] for h in sources_message(retrieved, room)[1]] == ["a.md", "b.md"]
    assert sources_message(retrieved, 20) == (None, [])


def test_build_context_puts_the_chunks_before_the_new_messages_within_the_budget():
    def msg(role, content, seq):
        return {"role": role, "content": content, "tokens": count_tokens({"content": content}),
                "seq": seq}

    def build(budget, retrieved, stored_=None):
        job = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}],
               "upstream": {}}
        history = stored_ if stored_ is not None else old
        return BuildContext().exec((job, (3, "not the request's"), system, budget, history,
                                    None, None, retrieved))

    system = [msg("system", "Be brief.", 1)]
    old = [msg("assistant", "old answer " * 30, 3), msg("user", "old question " * 30, 2)]
    retrieved = [hit("kelderath.md", 1, "The volcano last erupted in the year 1874.", 0.9)]
    roomy = build(10_000, retrieved)
    assert [m["role"] for m in roomy["context"]] == ["system", "user", "assistant", "system",
                                                     "user"]
    assert "1874" in roomy["context"][-2]["content"] and roomy["dropped"] == 0
    assert roomy["sources"] == [{"document": "kelderath.md", "document_id": 1, "chunk": 1,
                                 "score": 0.9}]
    assert roomy["sent_tokens"] == sum(m["tokens"] + 4 for m in roomy["context"])
    # A tight budget: the chunks win over old history, which is dropped (and noted).
    budget = roomy["sent_tokens"] - old[0]["tokens"]
    tight = build(budget, retrieved)
    assert tight["sources"] and tight["dropped"] == 2 and tight["sent_tokens"] <= budget
    assert "1874" in tight["context"][-2]["content"]
    assert "truncated" in tight["context"][1]["content"]
    # No room for any chunk beside the system and new messages: no sources, as without any.
    cramped = sum(m["tokens"] + 4 for m in system) + count_tokens({"content": QUESTION}) + 9
    plain = build(cramped, retrieved, [])
    assert plain["sources"] == [] and plain == {**build(cramped, [], []), "sources": []}


def test_lone_surrogates_and_nul_characters_are_stored_cleanly(rag):
    app, url = rag
    sid = str(uuid.uuid4())
    made = post_doc(url, sid, json={"name": "odd\ud800.txt", "content": "odd \ud800 text\x00 here"})
    assert made.status_code == 201, made.text
    assert made.json()["name"] == "odd\ufffd.txt"
    with app.app_context():
        chunks, _ = stored.session_chunks(sid)
    assert [c["content"] for c in chunks] == ["odd \ufffd text here"]


def test_postgresql_stores_and_searches_with_numpy(postgres_url, stack):
    """This machine's PostgreSQL 15 has no pgvector: PostgreSQL keeps the vectors as bytea and
    numpy ranks them, as on SQLite."""
    app = create_app({"REDIS_URL": stack.env["REDIS_URL"], "OLLAMA_HOST": stack.env["OLLAMA_HOST"],
                      "SQLALCHEMY_DATABASE_URI": postgres_url, **SETTINGS})
    sid = str(uuid.uuid4())
    with app.app_context():
        store.upgrade()
        for name, text in (("kelderath.md", VOLCANO), ("sourdough.txt", BREAD)):
            index_document(sid, name, text.encode(), None)
        shared = {"job": {"session_id": sid,
                          "messages": [{"role": "user", "content": QUESTION}]},
                  "upstream": Upstream(stack.env["OLLAMA_HOST"])}
        Retrieve().run(shared)
        assert shared["retrieved"][0]["document"] == "kelderath.md"
        assert "1874" in shared["retrieved"][0]["content"]
        db.session.remove()
        db.engine.dispose()

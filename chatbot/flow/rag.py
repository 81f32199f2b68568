"""Documents for retrieval (RAG): reading an upload's text, cutting it into overlapping token
chunks, embedding through the upstream's /api/embed, and ranking chunks against a query with
numpy: plain helpers of the index flow's nodes (flow/documents.py), pure apart from `embed`
(one embedding call). A document is added by running that flow
(chatbot.flow.flow.index_document)."""
import io
import logging
import os
import time

import numpy as np

from chatbot.store.admin import AdminError
from chatbot.tokens import encoding
from chatbot.upstream import UpstreamError

log = logging.getLogger(__name__)
EMBED_BATCH = 32  # chunks per /api/embed call
TYPES = {".md": "text/markdown", ".markdown": "text/markdown", ".txt": "text/plain",
         ".text": "text/plain", ".pdf": "application/pdf"}
ALIASES = {"text/x-markdown": "text/markdown"}


class Unsupported(AdminError):
    status = 415


class TooLarge(AdminError):
    status = 413


def content_type(name, declared):
    """text/markdown, text/plain or application/pdf: by the file name's extension, else by
    the declared type; anything else is refused (415)."""
    by_name = TYPES.get(os.path.splitext(name or "")[1].lower())
    declared = (declared or "").split(";")[0].strip().lower()
    kind = by_name or ALIASES.get(declared, declared)
    if kind not in TYPES.values():
        raise Unsupported(f"unsupported document type {declared or name!r}: "
                          "send Markdown, plain text or PDF")
    return kind


def read_text(data, kind, max_bytes, max_chars=None, max_pages=None, max_seconds=None):
    """The document's text; a 413 past max_bytes, a 400 for an unreadable PDF, text that is
    not UTF-8, no text at all, or more than max_chars of it (a PDF: more than max_pages, or
    read for longer than max_seconds)."""
    if len(data) > max_bytes:
        raise TooLarge(f"document too large: {len(data)} bytes, at most {max_bytes}")
    if kind == "application/pdf":
        text = _pdf_text(data, max_chars, max_pages, max_seconds)
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise AdminError("document is not UTF-8 text")
    text = text.replace("\x00", "")  # PostgreSQL's text cannot hold NUL
    if not text.strip():
        raise AdminError("document has no text")
    if max_chars and len(text) > max_chars:
        raise _too_long(len(text), max_chars)
    return text


def _too_long(chars, max_chars):
    return AdminError(f"document too long: {chars} characters of text, at most {max_chars} "
                      "(MAX_DOCUMENT_TEXT_CHARS)")


def _pdf_text(data, max_chars=None, max_pages=None, max_seconds=None):
    """A PDF's text, page by page. A few compressed bytes can inflate to megabytes of text
    operators: the reading stops (400) past max_pages, max_chars of text or max_seconds,
    checked at every operator pypdf reads, so a single page cannot run on."""
    from pypdf import PdfReader

    deadline = time.monotonic() + max_seconds if max_seconds else None
    texts, size = [], 0

    def budget(*_):  # pypdf calls it before each operator of a page's content
        if deadline and time.monotonic() > deadline:
            raise AdminError(f"PDF takes too long to read: more than {max_seconds:g} s "
                             "(MAX_PDF_SECONDS)")

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise AdminError("PDF is encrypted")
        if max_pages and len(reader.pages) > max_pages:
            raise AdminError(f"PDF too long: {len(reader.pages)} pages, at most {max_pages} "
                             "(MAX_PDF_PAGES)")
        for page in reader.pages:
            texts.append(page.extract_text(visitor_operand_before=budget) or "")
            size += len(texts[-1])
            if max_chars and size > max_chars:
                raise _too_long(size, max_chars)
        return "\n\n".join(texts)
    except AdminError:
        raise
    except Exception as exc:  # pypdf raises many kinds on a damaged file: all mean "bad PDF"
        raise AdminError(f"not a readable PDF: {str(exc)[:200] or type(exc).__name__}")


def chunk(text, size, overlap, max_chunks):
    """[(text, tokens)]: windows of `size` of our tokens, each starting `size - overlap`
    after the previous. Cut at token boundaries of the original text (never inside a
    character). More than max_chunks is refused (400)."""
    tokens = encoding().encode(text, disallowed_special=())
    step = max(size - overlap, 1)
    starts = range(0, max(len(tokens) - overlap, 1), step)
    if len(starts) > max_chunks:
        raise AdminError(f"document too long: {len(starts)} chunks of {size} tokens, "
                         f"at most {max_chunks}")
    decoded, offsets = encoding().decode_with_offsets(tokens)
    offsets = offsets + [len(decoded)]
    pieces = []
    for start in starts:
        end = min(start + size, len(tokens))
        piece = decoded[offsets[start]:offsets[end]].strip()
        if piece:
            pieces.append((piece, end - start))
    if not pieces:
        raise AdminError("document has no text")
    return pieces


def embed(post, model, texts):
    """Unit vectors (float32, one row per text) from one /api/embed call, `post(path, body)`."""
    result = post("/api/embed", {"model": model, "input": list(texts)})
    vectors = np.asarray(result.get("embeddings") or [], dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise UpstreamError(502, f"model '{model}' returned no embeddings")
    return unit(vectors)


def unit(vectors):
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def matrix(blobs, dim):
    """Stored vectors (float32 bytes) as one (n, dim) array, without a copy per row."""
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, dim)


def rank(query, vectors, k):
    """[(row, cosine)] of the k rows nearest `query`, best first (vectors are unit)."""
    if not len(vectors):
        return []
    scores = vectors @ query
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(i), float(scores[i])) for i in top]

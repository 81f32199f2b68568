"""The response cache (RESPONSE_CACHE_TTL seconds; 0, the default, is off). A request whose
reply is determined by what it asks (temperature 0, or a fixed seed) and that was answered
within the TTL, identical in kind, model, the session's stored thread and documents, its
messages and every other field sent upstream, is answered from Redis without entering the
line: in the same wire shape (streamed, as one chunk and the final one), marked `X-Cache: hit`,
and stored in its session as a normal turn. Keyed per key (or, while keys are off, for the one
user), so one key's cache never answers, nor times, another's.

The worker keeps a reply, {d, reply} of its final event, under the key the web gave its job
(chatbot.line.running)."""
import hashlib
import json
import logging

from flask import Response, current_app, g

from chatbot import store
from chatbot.api import auth
from chatbot.api.wire import dumps, reply_message
from chatbot.flow.context import new_messages
from chatbot.line.events import CHUNK, DONE
from chatbot.ops import logs
from chatbot.redis_keys import RESPONSE
from chatbot.store import branches, documents
from chatbot.tokens import count_tokens

log = logging.getLogger(__name__)


def wanted(upstream_body):
    """Whether the cache is on and the request's reply is determined by what it asks."""
    options = upstream_body.get("options") or {}
    seed = options.get("seed")
    return current_app.config["RESPONSE_CACHE_TTL"] > 0 and (
        options.get("temperature") == 0 or (isinstance(seed, int) and seed >= 0))


def key(kind, model, messages, upstream_body, session_id):
    """The request's cache key, and the session's thread tail it was taken at."""
    known = session_id and not g.get("fresh_session")
    tail = store.thread_tail(session_id, model) if known else (0, "")
    if kind == "chat" and branches.resend_point(session_id, model, messages, tail)[1]:
        return None, None  # it starts a branch: the worker's to store
    docs = documents.count_documents(session_id) if known else 0
    what = [auth.key_name() or "", kind, model, list(tail), docs, messages, upstream_body]
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return digest, tail


def lookup(digest):
    if digest is None:
        return None
    kept = current_app.extensions["redis"].get(RESPONSE.format(digest))
    g.metrics.inc("chatbot_response_cache_total", outcome="hit" if kept else "miss")
    return json.loads(kept) if kept else None


def store_turn(kind, model, messages, session_id, request_id, tail, event):
    """The answered turn in its session, as the worker would store it; False (nothing stored)
    when the thread moved on since the key was taken."""
    new = new_messages(tail, messages) if kind == "chat" else messages
    new = [{**m, "tokens": count_tokens(m)} for m in new]
    reply = {**event["reply"], "final": event["d"], "chunks": 1}
    try:
        store.touch_session(session_id, auth.key_name())
        after = store.append_messages(session_id, model, new, request_id, tail=tail if
                                      kind == "chat" else None)
        store.save_reply(session_id, model, request_id, reply, "ok", tail=after)
    except store.Conflict:
        store.db.session.rollback()
        return False
    return True


def respond(kind, kept, session_id, stream, wire):
    """The kept reply in the request's wire shape."""
    chunk, final = _events(kind, kept)
    if stream:
        resp = Response(wire.chunk(chunk["raw"]) + wire.final(final), mimetype=wire.mimetype)
    else:
        resp = wire.whole(final)
    resp.headers.update({"X-Session-ID": session_id, "X-Request-ID": g.request_id,
                         "X-Cache": "hit"})
    logs.bind(session_id=session_id, model=final["d"].get("model"), cached=True)
    return resp


def _events(kind, event):
    """The relay events a kept reply is answered with: one chunk of the whole reply in the
    upstream's own shape, and the final one."""
    reply, final = event["reply"], event["d"]
    if kind == "chat":
        chunk = {"model": final.get("model"), "created_at": final.get("created_at"),
                 "message": reply_message(reply), "done": False}
    else:
        chunk = {"model": final.get("model"), "created_at": final.get("created_at"),
                 "response": reply["content"], "done": False}
        if reply.get("thinking"):
            chunk["thinking"] = reply["thinking"]
    return [{"t": CHUNK, "raw": dumps(chunk), "n": 1},
            {"t": DONE, "d": final, "reply": reply, "marks": {}, "waited": 0.0}]

"""A chat or generate request's life on the web side: queue it, then answer from its events.
The line (chatbot.line) decides every ending; this module only asks it.

Its size is earned: the whole web-side life of a request reads top to bottom here (the cache
or the line, admission with each refusal it can meet, the watchdog while it waits, the answer
streamed or whole, and a client leaving), so that no step of it is decided elsewhere."""
import hashlib
import json
import logging
import time
import uuid

import redis
from flask import Response, current_app, g, request, stream_with_context

from chatbot import line as lines, store
from chatbot.api import answers, auth, quota, residency
from chatbot.api.errors import ApiError
from chatbot.api.disconnect import client_gone, client_socket
from chatbot.line import admission, eta, events as ev, sweep
from chatbot.line.events import CANCELLED, CHUNK, CLIENT_GONE, DONE, ERROR, FINAL, STARTED
from chatbot.line.relay import TICK
from chatbot.redis_keys import stream_key
from chatbot.ops import logs, timing
from chatbot.upstream import routing

BUSY = "server busy, please try again.  maximum pending requests exceeded"
RETRY_AFTER_SECONDS = 5
CHECK_EVERY = 0.5  # seconds between looks at the client socket (and a running request's worker)
LOOK_EVERY = 2.0  # seconds between asking the line about a request still waiting in it
LOOKS_PER_SECOND = 200  # ... at most this many asks a second from one process
log = logging.getLogger(__name__)



def turn(kind, model, messages, upstream_body, session_id, wire, stream, resumable,
         branch=False, join=True):
    """A chat or generate turn's response: joined to the same request sent before when that
    one is still to answer (a retry; not when `join` is false: a request that is new each
    time), else from the response cache (chatbot.api.answers) when it holds this very
    request's reply, else through the line."""
    # A retry names its session (one made for a request is new each time): a request in a new
    # session is never the same as another, and is not hashed.
    same = None if g.get("fresh_session") or not join else \
        _same(kind, model, messages, upstream_body, session_id, stream, resumable)
    first = _named_again(same)
    if first:
        return _join(first, stream, wire)
    digest, tail = None, None
    if not resumable and not branch and answers.wanted(upstream_body):
        digest, tail = answers.key(kind, model, messages, upstream_body, _session(session_id))
    kept = answers.lookup(digest)
    if kept:
        quota.storage().check(auth.key_name())
        if answers.store_turn(kind, model, messages, session_id, g.request_id, tail, kept):
            return answers.respond(kind, kept, session_id, stream, wire)
    ttl = current_app.config["RESPONSE_CACHE_TTL"]
    try:
        request_id, queue = submit(kind, model, messages, upstream_body, session_id,
                                   (wire, stream), resumable,
                                   cache=digest and [digest, max(1, int(ttl))], branch=branch,
                                   same=same)
    except admission.SameAsked as exc:
        return _join(exc.request_id, stream, wire)
    resp = respond(request_id, queue, session_id, stream, wire, resumable)
    if digest:
        resp.headers["X-Cache"] = "miss"
    return resp


def _same(kind, model, messages, upstream_body, session_id, stream, resumable):
    """What makes a request the same as one sent before (a retry): its asker, route kind,
    session, messages and every other field."""
    what = [auth.key_name() or "", kind, model, session_id, messages, upstream_body, stream,
            bool(resumable)]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _named_again(same):
    """The id of the request the client names by its X-Request-ID when it is this same request
    and its reply can still be read (waiting, running, or done with its events kept)."""
    if same is None or not g.get("request_id_given"):
        return None
    line = lines.get()
    info = line.info(g.request_id)
    if info.get("same") == same and (info["state"] in ("queued", "running") or (
            info["state"] == "done" and line.redis.exists(stream_key(g.request_id)))):
        return g.request_id
    return None


def _join(request_id, stream, wire):
    """Answer a retry from the first request's events, from the start."""
    info = lines.get().info(request_id)
    g.joined = True  # this client leaving does not end the first one's request
    logs.bind(request_id=request_id, joined=True)
    log.info("joined to the same request sent before: %s", request_id)
    hub = current_app.extensions["relay"].hub()
    waiter = hub.watch(request_id, again=True)
    hub.read([request_id])  # what is there already
    return respond(request_id, info["queue"], info["session_id"], stream, wire, waiter=waiter)


def _session(session_id):
    """The session a turn may use: another key's is as if there were none (404)."""
    if session_id and auth.scope() is not auth.ALL and not g.get("fresh_session"):
        exists, holder = store.session_owner(session_id)
        if exists and holder != auth.key_name():
            raise ApiError(404, f"session '{session_id}' not found")
    return session_id


def submit(kind, model, messages, upstream_body, session_id, answer=None, resumable=False,
           path=None, cache=None, same=None, branch=False):
    """Queue a turn (kind chat or generate), or an embedding request (kind embed, to `path`,
    no session). `messages` are what the session gains; `upstream_body` the rest of what is
    sent upstream (chat's context is added by the flow). A `resumable` request survives its
    client leaving for RESUME_GRACE_SECONDS, and is answered again as it was first (`answer`:
    (wire, stream); GET /api/requests/<id>/stream). `cache`: [key, seconds] its reply is
    kept under (chatbot.api.answers); `same` what makes it the same request as a retry of
    it (see _same); `branch` that its messages are the whole conversation, a branch starting
    where they differ (chatbot.store.branches). Returns (request_id, queue)."""
    owner = auth.key_name()
    _session(session_id)
    upstream_body = residency.clamped(upstream_body, model)
    if kind != "embed":  # a turn is stored: its key must have room left
        quota.storage().check(owner)
    host, queue = routing.get().choose(model, session_id)
    # Its worst case in tokens, reserved until it ends (then settled by the line)
    worst = 0 if kind == "embed" else quota.tokens().worst_case(upstream_body.get("options"))
    tally = quota.tokens().reserve(quota.asker(), worst)
    band = _band(owner, tally.pop("used", 0))
    hub = current_app.extensions["relay"].hub()
    line, lease = lines.get(), hub.lease
    g.model = model

    def admit():
        sid = session_id or f"embed-{g.request_id}"  # a thread of its own: no lock to wait for
        info = {"model": model, "session_id": sid, "host": host, "owner": owner or "",
                "channel": ev.sse_channel(owner, g.request_id), **tally}
        if same:
            info["same"] = same
        info["size"] = eta.size(messages)  # what prices it in estimates, and its run after
        if resumable:
            info.update(resumable=current_app.config["RESUME_GRACE_SECONDS"],
                        wire=json.dumps([*answer[0].recipe(), answer[1]]))
        elif answer and not answer[1]:  # it waits for the whole reply: rung for that alone
            info["quiet"] = 1
        job = {"request_id": g.request_id, "session_id": sid, "kind": kind, "path": path,
               "model": model, "messages": messages, "upstream": {**upstream_body, "model": model},
               "host": host, "queue": queue, "fresh": bool(g.get("fresh_session")),
               "owner": owner, "asker": owner or sid, "size": info["size"],
               "channel": info["channel"],
               "quiet": bool(info.get("quiet")),
               "max_seconds": current_app.config["MAX_REQUEST_SECONDS"], "cache": cache,
               "branch": branch}
        # Turns are taken between askers: the key, else the session.
        fair = current_app.config["QUEUE_ORDER"] == "fair"
        if fair and current_app.config["FAIR_COST"] == "tokens":  # charged by its tokens
            job["per_token"] = admission.price_per_token(
                1, current_app.config["FAIR_TOKENS_PER_TURN"])
        # One task per request, pushed by the admission itself; it runs whichever request
        # is first in the fair order.
        task = current_app.extensions["run_next_messages"](queue)
        # Watched before the task exists, so that no event comes too early; with a waiter of
        # its own, since the id may turn out to be another request's.
        waiter, position = hub.watch(g.request_id, again=True), None
        try:
            position = admission.admit(line, g.request_id, queue, info, lease, job,
                                       asker=job["asker"], weight=1 if fair else 0,
                                       task=task, same=same, band=band)
            return position
        finally:
            if position is None:
                hub.unwatch(g.request_id, waiter)

    try:
        position = admit()
        while position is None:  # a client reusing an id never reads another request's reply
            g.request_id = str(uuid.uuid4())
            position = admit()
    except BaseException as exc:
        quota.tokens().release(tally["tally_key"], tally["reserved"])
        if isinstance(exc, admission.QueueFull):  # the line, or this asker's share of it
            log.warning("refused: %s (queue %s)", type(exc).__doc__.strip(), queue)
            raise ApiError(503, BUSY, {"Retry-After": str(RETRY_AFTER_SECONDS)})
        if isinstance(exc, admission.JobTooLarge):
            raise ApiError(413, str(exc))
        if isinstance(exc, redis.RedisError):
            log.warning("refused: redis does not answer", exc_info=True)
            raise ApiError(503, ev.UNAVAILABLE["error"], {"Retry-After": str(RETRY_AFTER_SECONDS)})
        raise
    request_id = g.request_id
    g.marks["admitted"] = timing.now()
    # Said by the request's audit line (chatbot.api), which carries what is bound here.
    logs.bind(request_id=request_id, session_id=session_id, model=model, queue=queue,
              upstream=host, queue_position=position)
    return request_id, queue


def _band(owner, used):
    """1 (batch: after every interactive request) for a request that asks for it
    (X-Priority: batch), a key named in BATCH_KEYS, or a key past SOFT_QUOTA_SHARE of its
    TOKENS_PER_HOUR (`used` this hour): served after the others before it is refused."""
    config = current_app.config
    if request.headers.get("X-Priority", "").strip().lower() == "batch":
        return 1
    if owner and owner in config["BATCH_KEYS"]:
        return 1
    soft = config["SOFT_QUOTA_SHARE"] * config["TOKENS_PER_HOUR"]
    return 1 if soft > 0 and used >= soft else 0


def watchdog(request_id, queue, resumable=False):
    """A relay check: ends the wait when the client left, or when the line says the request
    can no longer answer (vanished, waited too long, its worker died)."""
    sock, line, hub = client_socket(request.environ), lines.get(), current_app.extensions["relay"].hub()
    next_look = [time.monotonic() + LOOK_EVERY]

    def check(started):
        if client_gone(sock):
            log.info("client disconnected while waiting")
            _metrics().inc("chatbot_stream_disconnects_total")
            _leave(request_id, resumable, CLIENT_GONE)
            return CLIENT_GONE
        if not started and time.monotonic() < next_look[0]:
            return None
        # A round trip each: with thousands waiting, each asks less often.
        next_look[0] = time.monotonic() + hub.spread(LOOK_EVERY, LOOKS_PER_SECOND)
        return sweep.verdict(line, request_id, queue)

    return check


def respond(request_id, queue, session_id, stream, wire, resumable=False, after=None,
            waiter=None):
    """Wait for the first reply event, so that an upstream error still sets the HTTP status,
    then stream (or answer once with the whole reply). A client that came back (`after`: the
    chunks it has) reads from `waiter`, and gets only the chunks that follow."""
    told = after is None and _status_wanted(wire, stream)
    events = current_app.extensions["relay"].events(
        request_id, check=watchdog(request_id, queue, resumable), every=CHECK_EVERY,
        waiter=waiter, ticks=told)
    if after is None:
        events = _timed(events, g.started)
    else:  # a second answer: its times say nothing of the request's
        events = (e for e in events if e["t"] != CHUNK or e.get("n", 0) > after)
    headers = {"X-Session-ID": session_id, "X-Request-ID": request_id}
    if resumable:  # what a client that comes back asks for: the chunks after the last it has
        headers.update({"X-Resumable": "true", "X-First-Chunk": str((after or 0) + 1)})
    if told:  # streamed at once: its place in line first, as thinking
        resp = Response(stream_with_context(_told_while_waiting(
            events, request_id, queue, wire, resumable)), mimetype=wire.mimetype)
        resp.headers.update(headers)
        return resp
    first = _first_reply_event(events, request_id, resumable)
    if first["t"] == ERROR:
        resp = wire.failure(first["status"], first["error"])
    elif not stream:
        last = first if first["t"] == DONE else final_event(events)
        resp = wire.failure(last["status"], last["error"]) if last["t"] == ERROR else wire.whole(last)
        # What each layer took (see chatbot.ops.timing); clients that don't know it ignore it.
        if after is None:
            resp.headers["Server-Timing"] = timing.header(
                {**(last.get("marks") or {}), **g.marks, "responded": timing.now()})
    else:
        # The context stays pushed while streaming: the watchdog and a cancel on close need it.
        resp = Response(stream_with_context(_lines(first, events, request_id, wire, resumable)),
                        mimetype=wire.mimetype)
    resp.headers.update(headers)
    return resp


def _first_reply_event(events, request_id, resumable):
    try:
        for event in events:
            if event["t"] != STARTED:
                return event
    except BaseException:
        _leave(request_id, resumable)
        raise


def _status_wanted(wire, stream):
    """Whether a streamed reply starts with its place in line as thinking: asked for by the
    request (X-Queue-Status: thinking) or for its key (QUEUE_STATUS_IN_THINKING), on a wire
    that can say it."""
    if not stream or not getattr(wire, "queue_status", None):
        return False
    if request.headers.get("X-Queue-Status", "").strip().lower() == "thinking":
        return True
    wanted = current_app.config["QUEUE_STATUS_IN_THINKING"]
    return wanted == "all" or (auth.key_name() or "") in wanted


def _told_while_waiting(events, request_id, queue, wire, resumable):
    """While the request waits, what the line says of it (chatbot.line.eta), each time that
    changes, as the wire's thinking; then the reply. Never stored: only this client hears it."""
    line, said, first = lines.get(), None, None
    try:
        for event in events:
            if event["t"] == TICK["t"]:
                estimate = eta.estimate(line, request_id, queue, fresh=False)
                text = eta.said(estimate) if estimate else None
                if text and text != said:
                    said = text
                    yield wire.queue_status(text, g.model)
            elif event["t"] != STARTED:
                first = event
                break
    except BaseException:
        _leave(request_id, resumable, CLIENT_GONE)
        raise
    if first is not None:
        yield from _lines(first, events, request_id, wire, resumable)


def final_event(events):
    for event in events:
        if event["t"] in FINAL:
            return event


def _lines(first, events, request_id, wire, resumable):
    finished, sse = False, wire.mimetype == "text/event-stream"
    try:
        for event in _chain(first, events):
            if event["t"] == CHUNK:
                # An SSE client that opted in gets each chunk's number as its event id.
                yield (f"id: {event.get('n', 0)}\n" if resumable and sse else "") + wire.chunk(event["raw"])
            elif event["t"] == DONE:
                finished = True
                yield wire.final(event)
            elif event["t"] == ERROR:  # after the first byte: one error line, status stays 200
                finished = True
                yield wire.error_line(event["error"])
    finally:
        if not finished:  # the client went away mid-stream: stop the generation
            log.info("client disconnected mid-stream")
            _metrics().inc("chatbot_stream_disconnects_total")
            _leave(request_id, resumable, CLIENT_GONE)


def _chain(first, events):
    yield first
    if first["t"] not in FINAL:
        yield from events


def _timed(events, started):
    """Pass events through, measuring time to first token (a quiet request's is its whole
    reply, which is when its client gets a first byte) and what we add on top of the line and
    the model (proxy overhead)."""
    first = True
    for event in events:
        now = time.perf_counter() - started
        if event["t"] in (CHUNK, DONE) and first:
            first = False
            _metrics().observe("chatbot_time_to_first_token_seconds", now)
        if event["t"] == DONE:
            g.marks["relayed"] = timing.now()
            model_time = (event["d"].get("total_duration") or 0) / 1e9
            _metrics().observe("chatbot_proxy_overhead_seconds",
                               max(0.0, now - event.get("waited", 0.0) - model_time))
        yield event


def _leave(request_id, resumable, event=CANCELLED):
    """The client left: a resumable request goes on for its grace period, for the client
    to come back; any other is cancelled, unless this client was joined to it (another
    one asked it first)."""
    if g.get("joined"):
        return
    if not resumable:
        return cancel(request_id, event)
    try:
        admission.detach(lines.get(), request_id, current_app.extensions["relay"].hub().lease,
                         current_app.config["RESUME_GRACE_SECONDS"])
        log.info("client left; the reply goes on for %g s for it to come back",
                 current_app.config["RESUME_GRACE_SECONDS"])
    except redis.RedisError:
        log.warning("could not keep %s for its client: redis does not answer", request_id)


def cancel(request_id, event=CANCELLED):
    """Nobody waits for it any more. With Redis away there is nothing left to cancel, and
    the error that brought us here must not be masked."""
    try:
        admission.cancel(lines.get(), request_id, event)
    except redis.RedisError:
        log.warning("could not cancel %s: redis does not answer", request_id)


def _metrics():
    return g.metrics  # the request's batch, written once it ends (chatbot.api)

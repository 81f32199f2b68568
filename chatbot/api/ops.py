"""For operators: /metrics (Prometheus), /healthz (the process is up), /readyz (it can serve:
Redis, the database, an upstream and a worker answer, and its event loop is not held up)."""
import time
from datetime import timedelta

import redis
from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError

from chatbot import line as lines
from chatbot.ops import metrics
from chatbot.store import ChatSession, db, usage
from chatbot.store.models import utcnow
from chatbot.redis_keys import ASKED, INFO, STREAMS, TOKENS
from chatbot.upstream import UpstreamError, routing

bp = Blueprint("ops", __name__)


@bp.get("/metrics")
def scrape():
    line, queues = lines.get(), routing.get().queues.values()
    counts = {q: line.counts(q) for q in queues}  # not snapshot: it reads every waiting request
    idle_after = timedelta(hours=current_app.config["SESSION_TIMEOUT_HOURS"])
    active = db.session.execute(db.select(db.func.count()).select_from(ChatSession).where(
        ChatSession.archived.is_(False), ChatSession.last_access > utcnow() - idle_after)).scalar_one()
    gauges = {
        "chatbot_queue_depth": ("Requests waiting in line.",
                                [({"queue": q}, waiting) for q, (waiting, _) in counts.items()]),
        "chatbot_queue_running": ("Requests being generated (0 or 1 per queue).",
                                  [({"queue": q}, running) for q, (_, running) in counts.items()]),
        "chatbot_active_sessions": ("Sessions used within SESSION_TIMEOUT_HOURS.", [({}, active)]),
        **_per_key(queues),
    }
    body = metrics.render(current_app.extensions["metrics"], gauges)
    return Response(body, mimetype="text/plain; version=0.0.4")


def _per_key(queues):
    """Each key's places in line (waiting or running), tokens this hour (generated, and
    reserved by requests not ended) and open SSE streams: only while keys are on, when the
    askers are a few named keys (else sessions and addresses, too many to label)."""
    if not current_app.extensions["keys"].enabled():
        return {}
    client, now = current_app.extensions["redis"], time.time()
    places, tokens, streams = [], [], []
    for queue in queues:
        for key in client.scan_iter(ASKED.format(queue, "*"), count=1000):
            members = client.smembers(key)
            pipe = client.pipeline(transaction=False)
            for rid in members:
                pipe.hget(INFO.format(rid.decode()), "state")
            held = sum(state in (b"queued", b"running") for state in pipe.execute())
            places.append(({"queue": queue, "key": key.decode().rsplit(":", 1)[1]}, held))
    for key in client.scan_iter(TOKENS.format("*", int(now // 3600)), count=1000):
        tokens.append(({"key": key.decode().split(":")[2]}, int(client.get(key) or 0)))
    for key in client.scan_iter(STREAMS.format("*"), count=1000):
        streams.append(({"key": key.decode().split(":", 2)[2]}, client.zcount(key, now, "+inf")))
    return {"chatbot_key_queue_places": ("A key's requests waiting or running.", places),
            "chatbot_key_tokens_this_hour": ("A key's tokens this clock hour: generated, and "
                                             "reserved by requests still in line.", tokens),
            "chatbot_key_streams": ("A key's open /api/events streams.", streams),
            "chatbot_key_storage_bytes": ("What a key's sessions store: messages, images, "
                                          "summaries, documents.",
                                          [({"key": k}, n) for k, n in usage.bytes_used().items()])}


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    checks = {"redis": _redis, "database": _database, "upstream": _upstream, "worker": _worker,
              "loop": _loop}
    results = {}
    for name, check in checks.items():
        started = time.perf_counter()
        error = check()
        results[name] = {"ok": error is None, "ms": round((time.perf_counter() - started) * 1000, 1)}
        if error:
            results[name]["error"] = error
    failed = [name for name, result in results.items() if not result["ok"]]
    body = {"status": "ok" if not failed else "unavailable", "failed": failed, "checks": results}
    return jsonify(body), 200 if not failed else 503


def _redis():
    try:
        current_app.extensions["redis"].ping()
    except redis.RedisError as exc:
        return f"redis does not answer: {exc}"


def _database():
    try:
        db.session.execute(db.text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"database does not answer: {exc.__class__.__name__}"


def _upstream():
    errors = []
    for host in routing.get().hosts:
        try:
            routing.get().upstream(host).get_json("/api/version")
            return None
        except UpstreamError as exc:
            errors.append(exc.error)
    return "; ".join(errors)


def _loop():
    lag, ceiling = metrics.loop_lag(), current_app.config["WEB_LOOP_LAG_MAX_SECONDS"]
    if lag is not None and lag > ceiling:
        return (f"the event loop was held {lag:.2f} s in the last {metrics.LAG_WINDOW:g} s "
                f"(WEB_LOOP_LAG_MAX_SECONDS={ceiling:g})")


def _worker():
    try:
        if current_app.extensions["celery"].control.ping(timeout=1.0, limit=1):
            return None
    except Exception as exc:  # kombu raises its own and redis' errors here
        return f"cannot ask the workers: {exc.__class__.__name__}"
    return "no Celery worker answers"

"""HTTP layer: blueprints and Ollama-style JSON errors for everything, including unknown routes."""
import logging
import re
import time
import uuid

from flask import g, jsonify, request
from werkzeug.exceptions import HTTPException

from chatbot.api import anthropic_wire
from chatbot.api.errors import ApiError, error_response, http_error_text
from chatbot.ops import logs, timing
from chatbot.upstream import UpstreamError
from chatbot.upstream.catalog import Answers

log = logging.getLogger(__name__)
audit = logging.getLogger("chatbot.audit")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")




def _recorder(metrics, batch, rule, model, status, started):
    endpoint = rule.rule if rule else "unmatched"

    def record():
        batch.inc("chatbot_requests_total", endpoint=endpoint, model=model, status=str(status))
        batch.observe("chatbot_request_duration_seconds", time.perf_counter() - started,
                      endpoint=endpoint)
        metrics.later(batch)  # with what the request noted on its way (g.metrics)

    return record


def init_app(app):
    from chatbot.api import anthropic, auth, ollama, openai, ops, queue, responses, sessions

    app.register_blueprint(ops.bp)
    app.register_blueprint(ollama.bp)
    app.register_blueprint(openai.bp)
    app.register_blueprint(responses.bp)
    app.register_blueprint(anthropic.bp)
    app.register_blueprint(sessions.bp)
    from chatbot.api import openapi
    app.register_blueprint(openapi.bp)
    from chatbot import web
    web.init_app(app)  # the chat page at /chat
    queue.init_app(app)
    app.extensions["model_answers"] = Answers(app.config["MODEL_INFO_CACHE_SECONDS"])

    @app.before_request
    def _request_id():
        given = request.headers.get("X-Request-ID", "")
        g.request_id_given = bool(REQUEST_ID.fullmatch(given))
        g.request_id = given if g.request_id_given else str(uuid.uuid4())
        g.started = time.perf_counter()
        g.marks = {"received": timing.now()}
        g.metrics = app.extensions["metrics"].batch()  # written with others' (Metrics.later)
        logs.clear()
        logs.bind(request_id=g.request_id)
        auth.authenticate()

    if app.config.get("CORS_ORIGINS"):  # off unless asked for (the chat page on another origin)
        from flask_cors import CORS

        CORS(app, origins=[o.strip() for o in app.config["CORS_ORIGINS"].split(",")],
             expose_headers=["X-Request-ID", "X-Session-ID"])

    @app.after_request
    def _echo_request_id(resp):
        # The audit trail: who, what, which session, how it ended; never content.
        audit.info("%s %s %s", request.method, request.url_rule or request.path,
                   resp.status_code)
        resp.headers.setdefault("X-Request-ID", g.request_id)
        if request.path != "/metrics":
            # Counted when the body is done, so a stream's duration is the whole stream.
            record = _recorder(app.extensions["metrics"], g.metrics, request.url_rule,
                               g.get("model", ""), resp.status_code, g.started)
            resp.call_on_close(record)
        return resp

    @app.errorhandler(ApiError)
    @app.errorhandler(UpstreamError)
    def _api_error(exc):
        return error_response(exc.status, exc.error, getattr(exc, "headers", None))

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        if request.path.startswith("/v1/messages"):  # no route matched: still Anthropic's door
            return anthropic_wire.failure(exc.code, http_error_text(exc))
        return error_response(exc.code, http_error_text(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc):
        return error_response(500, logs.incident(log, "unhandled error"))

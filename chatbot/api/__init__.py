"""HTTP layer: blueprints and Ollama-style JSON errors for everything, including unknown routes."""
import logging

from flask import jsonify
from werkzeug.exceptions import HTTPException

from chatbot.upstream import UpstreamError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status, error):
        super().__init__(error)
        self.status, self.error = status, error


def error_response(status, error, headers=None):
    resp = jsonify(error=error)
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


def init_app(app):
    from chatbot.api import ollama, openai

    app.register_blueprint(ollama.bp)
    app.register_blueprint(openai.bp)

    @app.errorhandler(ApiError)
    @app.errorhandler(UpstreamError)
    def _api_error(exc):
        return error_response(exc.status, exc.error)

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        if exc.code == 404:
            return error_response(404, "404 page not found")
        return error_response(exc.code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc):
        log.exception("unhandled error")
        return error_response(500, f"internal error: {exc.__class__.__name__}")

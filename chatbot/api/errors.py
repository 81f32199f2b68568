"""Ollama's error shape, {"error": "..."} with the right status: what every route raises and
answers with, and what a refusal Flask raised says (the same text in every door's shape). A
leaf: any module may import it."""
from flask import current_app, jsonify


class ApiError(Exception):
    def __init__(self, status, error, headers=None):
        super().__init__(error)
        self.status, self.error, self.headers = status, error, headers or {}


def error_response(status, error, headers=None):
    resp = jsonify(error=error)
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


def http_error_text(exc):
    """What a refusal Flask or werkzeug raised (an HTTPException) says."""
    if exc.code == 404:
        return "404 page not found"
    if exc.code == 413:
        return f"request body too large: at most {current_app.config['MAX_CONTENT_LENGTH']} bytes"
    if exc.code == 429:
        return f"rate limit exceeded: {exc.description}"
    return exc.description or exc.name

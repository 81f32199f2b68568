"""Ollama's error shape, {"error": "..."} with the right status: what every route raises and
answers with. A leaf: any module may import it."""
from flask import jsonify


class ApiError(Exception):
    def __init__(self, status, error, headers=None):
        super().__init__(error)
        self.status, self.error, self.headers = status, error, headers or {}


def error_response(status, error, headers=None):
    resp = jsonify(error=error)
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp

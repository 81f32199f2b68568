"""Anthropic's Messages API (POST /v1/messages) over the same line, keys, quotas and sessions
(X-Session-ID, as on /v1/chat/completions). A request is read by chatbot.api.anthropic_request
as Ollama's anthropic package reads it; the answer is written by chatbot.api.anthropic_wire,
and so is every refusal on this door."""
import logging

from flask import Blueprint
from werkzeug.exceptions import HTTPException

from chatbot.api import anthropic_request as read, anthropic_wire, turns, validate
from chatbot.api.errors import ApiError, http_error_text
from chatbot.ops import logs
from chatbot.upstream import UpstreamError

bp = Blueprint("anthropic", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)


@bp.errorhandler(ApiError)
@bp.errorhandler(UpstreamError)
def _error(exc):
    return anthropic_wire.failure(exc.status, exc.error, getattr(exc, "headers", None))


@bp.errorhandler(HTTPException)
def _http_error(exc):  # 405, 413, a rate limit's 429: Anthropic's shape too
    return anthropic_wire.failure(exc.code, http_error_text(exc))


@bp.errorhandler(Exception)
def _unexpected(exc):
    return anthropic_wire.failure(500, logs.incident(log, "unhandled error"))


@bp.post("/messages")
def messages():
    body = validate.json_body("MessagesRequest")
    model, messages, upstream = read.from_request(body)
    stream = validate.stream_flag(body, default=False)  # Anthropic: not streamed
    validate.options(upstream, "MessagesRequest")
    validate.turn_fields(upstream, "MessagesRequest")
    session_id = validate.session_id({})  # the X-Session-ID header
    estimated = read.estimate(messages, upstream)  # message_start's, before the model counts
    wire = anthropic_wire.AnthropicMessages(model, estimated_input=estimated)
    return turns.turn("chat", model, messages, upstream, session_id, wire, stream,
                      validate.resumable(body))


@bp.post("/messages/count_tokens")
def count_tokens():
    """Not Ollama's (it has no such route), but cheap: Ollama's own estimate of a request's
    input tokens (anthropic.EstimateCountTokens, characters / 4), nothing queued."""
    body = validate.json_body("CountTokensRequest")
    validate.model_name(body)
    messages = read.conversation(body)
    return anthropic_wire.json_response({"input_tokens": read.estimate(
        messages, {"tools": read.function_tools(body.get("tools"))})})

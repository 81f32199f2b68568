"""Embedding requests (/api/embed, /api/embeddings, /v1/embeddings) as jobs of their asker in
the fair line: a model runs one thing at a time, so an embedding of many inputs takes its
asker's turn rather than jumping the line."""
from flask import current_app

from chatbot.api import turns
from chatbot.api.errors import ApiError
from chatbot.line.events import ERROR


def embed(model, path, body):
    """The upstream's JSON for `body` sent to `path`, once the job's turn has come; its error
    as Ollama's. Cancelled when its client leaves."""
    request_id, queue = turns.submit("embed", model, [], body, None, answer=(None, False),
                                     path=path)
    try:
        final = turns.final_event(current_app.extensions["relay"].events(
            request_id, check=turns.watchdog(request_id, queue), every=turns.CHECK_EVERY))
    except BaseException:
        turns.cancel(request_id)
        raise
    if final["t"] == ERROR:
        raise ApiError(final["status"], final["error"])
    return final["d"]

"""Embedding requests (/api/embed, /api/embeddings, /v1/embeddings) as jobs of their asker in
the fair line: a model runs one thing at a time, so an embedding of many inputs takes its
asker's turns rather than jumping the line. A long list of inputs is sent as slices of
SLICE inputs, one job after another, so that other askers' turns come in between."""
from flask import current_app

from chatbot.api import turns
from chatbot.api.errors import ApiError
from chatbot.line.events import ERROR

SLICE = 16  # inputs per job: about a chat turn's time on a small embedding model
SUMMED = ("total_duration", "load_duration", "prompt_eval_count")


def embed(model, path, body):
    """The upstream's JSON for `body` sent to `path`, once its turns have come (the slices'
    answers joined into one); its error as Ollama's. Cancelled when its client leaves."""
    inputs = body.get("input")
    if not isinstance(inputs, list) or len(inputs) <= SLICE:
        return _job(model, path, body)
    answers = [_job(model, path, {**body, "input": inputs[i:i + SLICE]})
               for i in range(0, len(inputs), SLICE)]
    joined = {**answers[0], "embeddings": [e for a in answers for e in a.get("embeddings", ())]}
    for field in SUMMED:
        if field in joined:
            joined[field] = sum(a.get(field) or 0 for a in answers)
    return joined


def _job(model, path, body):
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

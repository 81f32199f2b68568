"""How long a request may keep its model loaded (its `keep_alive`), within the server's
bounds: KEEP_ALIVE_MIN and KEEP_ALIVE_MAX for every request; forever (a negative keep_alive)
and unloading at once (0) for admins only (everyone while keys are off), so that one key
cannot pin a model nobody else can then use, nor unload one others use; PINNED_MODELS stay
loaded whatever a request says."""
from flask import current_app

from chatbot.api import auth
from chatbot.api.errors import ApiError
from chatbot.engine.ollama_format import ApiError as DurationError, keep_alive_seconds

OLLAMA_DEFAULT = 300.0  # seconds a model stays loaded when a request does not say (Ollama's)


def clamped(body, model):
    """`body` with its keep_alive within bounds (in seconds when changed)."""
    config = current_app.config
    if model in config["PINNED_MODELS"]:
        return {**body, "keep_alive": -1}
    given = body.get("keep_alive")
    if given is None or given == "":
        return body  # the upstream's own default
    try:
        seconds = keep_alive_seconds(given)  # None: forever
    except DurationError as exc:
        raise ApiError(exc.status, exc.message)
    admin = auth.scope() is auth.ALL
    if admin and (seconds is None or seconds == 0):
        return body
    low, high = config["KEEP_ALIVE_MIN"], config["KEEP_ALIVE_MAX"]
    wanted = (high or OLLAMA_DEFAULT) if seconds is None else seconds
    kept = min(wanted, high) if high else wanted
    kept = max(kept, low) if low else kept
    return body if kept == seconds else {**body, "keep_alive": kept}

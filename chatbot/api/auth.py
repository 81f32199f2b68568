"""Who is asking: `Authorization: Bearer KEY` or `x-api-key: KEY` when keys are on
(chatbot.store.keys), and what they may see. A session or request belongs to the key that made
it; any other key is told it does not exist (404), exactly as for an unknown id. Admin keys,
and everyone while keys are off, see everything; keys off, only this machine and its pages may
ask (chatbot.api.local)."""
from flask import current_app, g, request

from chatbot.ops import logs
from chatbot.api import local
from chatbot.api.errors import ApiError

ALL = object()  # the scope of an admin key, or of everyone while keys are off
OPEN = {"/", "/api/version", "/api/status", "/healthz", "/readyz", "/chat"}
PAGE_FILES = "/chat/static/"  # the chat page's own files: no data in them
UNAUTHORIZED = "unauthorized"


def authenticate():
    """Runs before every request: sets g.identity (None while keys are off)."""
    g.identity = None
    if is_open():
        return
    keys = current_app.extensions["keys"]
    if not keys.enabled():
        local.refuse_foreign()
        return
    token = presented_key()
    identity = keys.identify(token) if token else None
    if identity is None:
        raise ApiError(401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
    g.identity = identity
    logs.bind(key=identity.name)


def presented_key():
    """The key a request carries: `Authorization: Bearer KEY`, else `x-api-key: KEY` (what
    Anthropic's SDKs send, and Claude Code with ANTHROPIC_API_KEY)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return token.strip()
    return request.headers.get("x-api-key", "").strip()


def is_open():
    """A route anyone may use, key or not."""
    if request.path in OPEN or request.path.startswith(PAGE_FILES) or request.method == "OPTIONS":
        return True
    return request.path == "/metrics" and current_app.config.get("METRICS_OPEN")


def scope():
    """ALL, or the name of the (non-admin) key asking."""
    identity = g.get("identity")
    return ALL if identity is None or identity.admin else identity.name


def restriction():
    """None (everything), or the name of the non-admin key whose things alone it may see."""
    narrowed = scope()
    return None if narrowed is ALL else narrowed


def key_name():
    """The asking key's name (None while keys are off): what a new session is owned by."""
    identity = g.get("identity")
    return identity.name if identity else None


def owns(owner):
    return scope() is ALL or owner == scope()


def require_admin(what):
    if scope() is not ALL:
        raise ApiError(403, f"{what} needs an admin key")

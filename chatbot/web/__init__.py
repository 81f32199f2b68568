"""The chat page: GET /chat (one template) and its static files under /chat/static/.

The page is plain HTML, CSS and a few small ES modules, no build step and nothing from a CDN.
It calls the same public API as any client (/api/tags, /api/chat, /api/sessions...,
/api/events), sending the key it keeps in the browser when keys are on. The page and its
files hold no data, so they are served without a key (chatbot.api.auth.is_open)."""
from flask import Blueprint, current_app, make_response, render_template, request

STATIC = "/chat/static"
bp = Blueprint("web", __name__, template_folder="templates", static_folder="static",
               static_url_path=STATIC)

# Only our own files run: no inline script or style, no other origin, no framing.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")


@bp.get("/chat")
def page():
    resp = make_response(render_template("chat.html",
                                         auto_titles=current_app.config["AUTO_TITLES"]))
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def wants_page():
    """A browser asking for `/`: it prefers HTML to plain text. curl (`*/*`), Ollama's
    clients (`application/json`) and a request without Accept prefer plain text."""
    accept = request.accept_mimetypes
    return accept["text/html"] > accept["text/plain"]


def init_app(app):
    app.register_blueprint(bp)

"""The bundled engine's HTTP server: `chatbot engine` runs serve(host, port)."""
import logging
import os
import signal
import sys
import threading

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from .ollama_format import ApiError
from .models import Registry

log = logging.getLogger(__name__)


class Engine:
    """The registry plus the lock that makes generation one-at-a-time, as default Ollama."""

    def __init__(self, registry):
        self.registry = registry
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # set on shutdown: running generations end early


def create_engine_app(models_dir=None):
    from . import api, completions, manage

    app = Flask(__name__)
    app.json.sort_keys = False  # keep Ollama's field order; some people diff responses
    app.json.ensure_ascii = False
    app.extensions["chatbot_engine"] = Engine(Registry(models_dir))
    app.register_blueprint(api.bp)
    app.register_blueprint(completions.bp)
    app.register_blueprint(manage.bp)

    # Clients parse every error body as JSON: never let Flask render an HTML page.
    @app.errorhandler(ApiError)
    def api_error(exc):
        return jsonify(error=exc.message), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc):
        # Go's net/http wording ("404 page not found"), which Ollama clients have seen.
        text = "page not found" if exc.code == 404 else exc.name.lower()
        return jsonify(error=f"{exc.code} {text}"), exc.code

    @app.errorhandler(Exception)
    def internal_error(exc):
        log.exception("engine request failed")
        return jsonify(error=str(exc) or type(exc).__name__), 500

    return app


def serve(host="127.0.0.1", port=11435, models_dir=None):
    """Serve until SIGTERM/SIGINT; one thread per connection, generation still one at a time."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine %(levelname)s %(message)s")
    app = create_engine_app(models_dir)
    server = make_server(host, port, app, threaded=True)
    server.daemon_threads = True

    def stop(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    log.info("listening on http://%s:%d", host, server.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine = app.extensions["chatbot_engine"]
        engine.stopping.set()
        # Free the models only when no generation is using them. Otherwise leave at once:
        # interpreter teardown under a thread still inside llama.cpp can crash.
        sys.stdout.flush()
        sys.stderr.flush()
        if not engine.lock.acquire(timeout=2):
            os._exit(0)
        engine.registry.close()
    return 0

"""chatbot: an Ollama-compatible chat server with sessions and a fair queue."""
import os

from flask import Flask


def create_app(config=None):
    from chatbot import api, config as settings, queueing, relay, store, tasks
    from chatbot.catalog import Catalog
    from chatbot.upstream import Upstream

    app = Flask(__name__, instance_relative_config=True)
    app.config.update(settings.load(app.instance_path))
    app.config.update(config or {})
    os.makedirs(app.instance_path, exist_ok=True)
    store.init_app(app)
    relay.init_app(app)
    queueing.init_app(app)
    upstream = Upstream(app.config["OLLAMA_HOST"], app.config["UPSTREAM_CONNECT_TIMEOUT"],
                        app.config["UPSTREAM_READ_TIMEOUT"])
    app.extensions["upstream"] = upstream
    app.extensions["catalog"] = Catalog(upstream)
    tasks.celery_init_app(app)
    api.init_app(app)
    return app

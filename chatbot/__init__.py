"""chatbot: an Ollama-compatible chat server with sessions and a fair queue."""
import os


def create_app(config=None):
    # Imported here, not above: `chatbot web` and gunicorn's config import this package before
    # gevent patches the standard library, which must come before ssl is imported (by Flask).
    from flask import Flask

    from chatbot import api, cli, config as settings, line, redis_pool, store
    from chatbot.store import keys
    from chatbot.ops import logs, metrics
    from chatbot.line import relay
    from chatbot.api import quota
    from chatbot.worker import celery_init_app
    from chatbot.worker import tasks  # noqa: F401  registers the Celery tasks
    from chatbot.flow.window import Calibration, Windows
    from chatbot.upstream.routing import Router

    app = Flask(__name__, instance_relative_config=True)
    app.json.sort_keys = False  # Ollama keeps fields (tool call arguments too) in their order
    app.config.update(settings.load(app.instance_path))
    app.config.update(config or {})
    if "OLLAMA_HOSTS" in (config or {}):
        app.config["OLLAMA_HOSTS"] = [settings.normalize_host(h) for h in config["OLLAMA_HOSTS"]]
    elif "OLLAMA_HOST" in (config or {}):  # a test or caller naming one host
        app.config["OLLAMA_HOSTS"] = [settings.normalize_host(config["OLLAMA_HOST"])]
    os.makedirs(app.instance_path, exist_ok=True)
    logs.init_app(app)
    store.init_app(app)
    keys.init_app(app)
    redis_pool.init_app(app)
    relay.init_app(app)
    # A request whose worker died keeps what it had streamed, marked lost.
    line.init_app(app, on_lost=lambda request_id, info, reply: store.save_lost_reply(
        info["session_id"], info["model"], request_id, reply))
    metrics.init_app(app)
    app.extensions["windows"] = Windows()
    app.extensions["calibration"] = Calibration(app.extensions["redis"])
    router = Router(app.config["OLLAMA_HOSTS"], app.config["UPSTREAM_CONNECT_TIMEOUT"],
                    app.config["UPSTREAM_READ_TIMEOUT"], app.extensions["redis"],
                    app.extensions["line"], app.config["UPSTREAM_RETRIES"])
    app.extensions["router"] = router
    app.extensions["upstream"] = router.upstream()  # model management and listings
    celery_init_app(app)
    api.init_app(app)
    quota.init_app(app)  # after the API's hooks: it counts per key
    cli.init_app(app)  # `flask sessions ...`
    return app

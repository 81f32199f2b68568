"""gunicorn for the web process: `gunicorn -c docker/gunicorn.conf.py wsgi:app`. The settings
live in chatbot.ops.webserver, shared with `chatbot up` (CHATBOT_BIND, WEB_CONCURRENCY,
WORKER_CONNECTIONS, GUNICORN_TIMEOUT). A worker checks before it serves (chatbot.ops.startup): a
database not migrated, REQUIRE_KEYS=true without a key, or CHATBOT_BIND off loopback without
keys and without ALLOW_OPEN=true stop gunicorn with the reason."""
from chatbot.ops.webserver import settings

globals().update(settings())

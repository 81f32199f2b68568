"""gunicorn for the web process: `gunicorn -c docker/gunicorn.conf.py wsgi:app`. The settings
live in chatbot.webserver, shared with `chatbot up` (CHATBOT_BIND, WEB_CONCURRENCY,
WORKER_CONNECTIONS, GUNICORN_TIMEOUT)."""
from chatbot.webserver import settings

globals().update(settings())

"""gunicorn for the web process: gevent workers, so hundreds of clients waiting in line or
streaming cost a greenlet each, not a thread. `gunicorn -c docker/gunicorn.conf.py wsgi:app`."""
import multiprocessing
import os

bind = os.environ.get("CHATBOT_BIND", "0.0.0.0:8000")
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", min(4, multiprocessing.cpu_count())))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", 2000))
# A stream lasts as long as the model talks; gevent workers heartbeat on their own.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 0))
graceful_timeout = 30
keepalive = 5
accesslog = None  # chatbot logs each request itself, as JSON with its request id
errorlog = "-"

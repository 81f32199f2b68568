"""The one Redis connection pool of a process, shared by the line, the relay, metrics,
calibration and routing."""
import redis
from flask import current_app


def connect(redis_url, max_connections=64):
    """A client whose threads queue for a connection rather than fail when hundreds of
    requests touch Redis at once. Short socket timeouts: a restarted or vanished Redis is
    noticed in seconds (blocking reads stay below them)."""
    pool = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=max_connections, timeout=30, socket_connect_timeout=2,
        socket_timeout=5, health_check_interval=10, retry_on_timeout=False)
    return redis.Redis(connection_pool=pool)


def init_app(app):
    app.extensions["redis"] = connect(app.config["REDIS_URL"])


def get():
    return current_app.extensions["redis"]

"""Every setting, read from the environment (and a .env file) in one place. README lists them."""
import os
from pathlib import Path

from dotenv import load_dotenv


def _int(name, default):
    return int(os.environ.get(name, default))


def _float(name, default):
    return float(os.environ.get(name, default))


def load(instance_path):
    """A fresh dict of settings; called by create_app so tests can change the environment."""
    load_dotenv()
    instance = Path(instance_path)
    return {
        "OLLAMA_HOSTS": [normalize_host(h) for h in (
            os.environ.get("OLLAMA_HOSTS") or os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434"
        ).split(",") if h.strip()],
        "DEFAULT_MODEL": os.environ.get("DEFAULT_MODEL", ""),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "SQLALCHEMY_DATABASE_URI": os.environ.get(
            "DATABASE_URL", f"sqlite:///{instance / 'chatbot.db'}"),
        "SESSION_TIMEOUT_HOURS": _float("SESSION_TIMEOUT_HOURS", 24),
        "MAX_QUEUE": _int("MAX_QUEUE", 512),
        "QUEUE_TIMEOUT_SECONDS": _float("QUEUE_TIMEOUT_SECONDS", 600),
        "CONTEXT_REPLY_RESERVE": _int("CONTEXT_REPLY_RESERVE", 512),
        "UPSTREAM_CONNECT_TIMEOUT": _float("UPSTREAM_CONNECT_TIMEOUT", 2.0),
        "UPSTREAM_READ_TIMEOUT": _float("UPSTREAM_READ_TIMEOUT", 300.0),
        "RELAY_TTL_SECONDS": _int("RELAY_TTL_SECONDS", 3600),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "json"),
        "UPSTREAM_RETRIES": _int("UPSTREAM_RETRIES", 2),
    }


def normalize_host(host):
    """OLLAMA_HOST may be `host`, `host:port` or a URL, as the ollama CLI accepts."""
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = "http://" + host
    scheme, rest = host.split("://", 1)
    if ":" not in rest.split("/", 1)[0]:
        rest = rest.replace("/", ":11434/", 1) if "/" in rest else rest + ":11434"
    return f"{scheme}://{rest}"

"""Every setting, read from the environment (and a .env file) in one place. README lists them."""
import os
from pathlib import Path

from dotenv import load_dotenv

from chatbot.engine import schema_limits
from chatbot.engine.ollama_format import keep_alive_seconds


def _int(name, default):
    return int(os.environ.get(name, default))


def _float(name, default):
    return float(os.environ.get(name, default))


def _bool(name, default):
    return os.environ.get(name, str(default)).strip().lower() in ("1", "true", "yes", "on")


def _names(name):
    """"all", or the set of comma-separated names given (empty when unset)."""
    if os.environ.get(name, "").strip().lower() in ("all", "true", "1", "yes", "on"):
        return "all"
    return _key_names(name)


def _key_names(name):
    return frozenset(n.strip() for n in os.environ.get(name, "").split(",") if n.strip())


def _duration(name):
    """Seconds, from a number or a Go duration ("30m"); None when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    seconds = keep_alive_seconds(value)
    if not seconds:
        raise ValueError(f"{name}={value!r}: must be a positive duration")
    return seconds


def _choice(name, choices):
    """One of `choices` (the first when unset); anything else stops the start, named."""
    value = os.environ.get(name, choices[0]).strip().lower()
    if value not in choices:
        raise ValueError(f"{name}={value!r}: must be one of {', '.join(choices)}")
    return value


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
        # unset: a quarter of MAX_QUEUE (chatbot.line.init_app); 0: no bound per asker
        "MAX_QUEUE_PER_KEY": (int(os.environ["MAX_QUEUE_PER_KEY"])
                              if os.environ.get("MAX_QUEUE_PER_KEY") else None),
        "QUEUE_TIMEOUT_SECONDS": _float("QUEUE_TIMEOUT_SECONDS", 600),
        "MAX_REQUEST_SECONDS": _float("MAX_REQUEST_SECONDS", 600),
        "QUEUE_ORDER": _choice("QUEUE_ORDER", ("fair", "fifo")),
        # the fair order charges a request one turn, or its tokens (prompt and generated)
        "FAIR_COST": _choice("FAIR_COST", ("requests", "tokens")),
        "FAIR_TOKENS_PER_TURN": _int("FAIR_TOKENS_PER_TURN", 500),
        # priority bands: batch requests go after every interactive one, until they waited this
        "BATCH_KEYS": _key_names("BATCH_KEYS"),
        "BATCH_MAX_WAIT_SECONDS": _float("BATCH_MAX_WAIT_SECONDS", 120),
        "SOFT_QUOTA_SHARE": _float("SOFT_QUOTA_SHARE", 0.8),
        # warm order: a thread the host has warm (or its loaded model) first, within a bound
        # how long a request may keep its model loaded (chatbot.api.residency)
        "KEEP_ALIVE_MIN": _duration("KEEP_ALIVE_MIN"),
        "KEEP_ALIVE_MAX": _duration("KEEP_ALIVE_MAX"),
        "PINNED_MODELS": _key_names("PINNED_MODELS"),
        "PRELOAD_MODELS": _key_names("PRELOAD_MODELS"),  # loaded when the workers start
        "WARM_PASSES": _int("WARM_PASSES", 0),
        "WARM_WINDOW": _int("WARM_WINDOW", 8),
        "WARM_SLOTS": _int("WARM_SLOTS", 1),
        "RESUME_GRACE_SECONDS": _float("RESUME_GRACE_SECONDS", 30),
        # "all", or the key names whose streamed replies start with their place in line
        "QUEUE_STATUS_IN_THINKING": _names("QUEUE_STATUS_IN_THINKING"),
        "CONTEXT_REPLY_RESERVE": _int("CONTEXT_REPLY_RESERVE", 512),
        "CONTEXT_STRATEGY": _choice("CONTEXT_STRATEGY", ("truncate", "summarize")),
        "SUMMARY_MODEL": os.environ.get("SUMMARY_MODEL", ""),  # empty: the chat's own model
        "SUMMARY_MAX_TOKENS": _int("SUMMARY_MAX_TOKENS", 96),
        "UPSTREAM_CONNECT_TIMEOUT": _float("UPSTREAM_CONNECT_TIMEOUT", 2.0),
        "UPSTREAM_READ_TIMEOUT": _float("UPSTREAM_READ_TIMEOUT", 300.0),
        "RELAY_TTL_SECONDS": _int("RELAY_TTL_SECONDS", 3600),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "auto"),  # see logs.resolve
        "UPSTREAM_RETRIES": _int("UPSTREAM_RETRIES", 2),
        # Short outages waited out: a turn whose upstream cannot be reached, before its first
        # byte (the worker's calls only); a waiting client while Redis does not answer.
        "UPSTREAM_WAIT_SECONDS": _float("UPSTREAM_WAIT_SECONDS", 30),
        "REDIS_WAIT_SECONDS": _float("REDIS_WAIT_SECONDS", 10),
        # Many users: keys, what may pass, how much.
        "API_KEYS": os.environ.get("API_KEYS", ""),
        "ADMIN_API_KEYS": os.environ.get("ADMIN_API_KEYS", ""),
        "REQUIRE_KEYS": _bool("REQUIRE_KEYS", False),  # no start without a key
        # Keys off: served to this machine only (chatbot.api.local) unless opened on purpose.
        "ALLOWED_HOSTS": os.environ.get("ALLOWED_HOSTS", ""),
        "ALLOW_OPEN": _bool("ALLOW_OPEN", False),
        "METRICS_OPEN": _bool("METRICS_OPEN", False),
        "ALLOW_MODEL_MANAGEMENT": _bool("ALLOW_MODEL_MANAGEMENT", True),
        "MAX_CONTENT_LENGTH": _int("MAX_CONTENT_LENGTH", 16 * 1024 * 1024),
        "MAX_MESSAGES": _int("MAX_MESSAGES", 1000),
        "MAX_MESSAGE_CHARS": _int("MAX_MESSAGE_CHARS", 1_000_000),
        "MAX_IMAGE_BYTES": _int("MAX_IMAGE_BYTES", 10 * 1024 * 1024),
        "MAX_NUM_CTX": _int("MAX_NUM_CTX", 131072),
        "MAX_NUM_PREDICT": _int("MAX_NUM_PREDICT", 32768),
        # FORMAT_MAX_REPEAT, _ENUM, _DEPTH, _NODES: bounds on a `format` schema
        "FORMAT_BOUNDS": schema_limits.Bounds.from_env(),
        "RATE_LIMIT": os.environ.get("RATE_LIMIT", ""),
        "RATE_LIMIT_PER_KEY": os.environ.get("RATE_LIMIT_PER_KEY", ""),
        "MAX_STREAMS_PER_KEY": _int("MAX_STREAMS_PER_KEY", 64),
        "STREAM_MAX_SECONDS": _float("STREAM_MAX_SECONDS", 600),
        "TOKENS_PER_HOUR": _int("TOKENS_PER_HOUR", 0),
        # What a key may store (messages, images, summaries, documents); 0: no limit
        "MAX_STORAGE_BYTES_PER_KEY": _int("MAX_STORAGE_BYTES_PER_KEY", 0),
        # After a session's first reply, a title asked of the model (never over a user's)
        "AUTO_TITLES": _bool("AUTO_TITLES", True),
        # Replies of deterministic requests answered again from Redis this long; 0: off
        "RESPONSE_CACHE_TTL": _float("RESPONSE_CACHE_TTL", 0),
        # Model listings and /api/show answers kept this long in each web process
        "MODEL_INFO_CACHE_SECONDS": _float("MODEL_INFO_CACHE_SECONDS", 5),
        # What one request may hold in Redis while it waits (its messages and images)
        "MAX_JOB_BYTES": _int("MAX_JOB_BYTES", 8 * 1024 * 1024),
        "CORS_ORIGINS": os.environ.get("CORS_ORIGINS", ""),
        # Documents (RAG): embedded with EMBED_MODEL at upload, searched before each turn.
        "EMBED_MODEL": os.environ.get("EMBED_MODEL", "all-minilm"),
        "RAG_TOP_K": _int("RAG_TOP_K", 3),
        "RAG_CHUNK_TOKENS": _int("RAG_CHUNK_TOKENS", 200),
        "RAG_CHUNK_OVERLAP": _int("RAG_CHUNK_OVERLAP", 40),
        "MAX_DOCUMENT_BYTES": _int("MAX_DOCUMENT_BYTES", 10 * 1024 * 1024),
        "MAX_DOCUMENT_CHUNKS": _int("MAX_DOCUMENT_CHUNKS", 1000),
        "MAX_DOCUMENTS_PER_SESSION": _int("MAX_DOCUMENTS_PER_SESSION", 50),
        # Hostile input: budgets that keep the web's event loop answering (README).
        "MAX_SESSION_BODY_BYTES": _int("MAX_SESSION_BODY_BYTES", 8 * 1024 * 1024),
        "MAX_JSON_VALUES": _int("MAX_JSON_VALUES", 200_000),
        "MAX_IMPORT_MESSAGES": _int("MAX_IMPORT_MESSAGES", 10_000),
        "MAX_PDF_PAGES": _int("MAX_PDF_PAGES", 500),
        "MAX_PDF_SECONDS": _float("MAX_PDF_SECONDS", 10),
        "MAX_DOCUMENT_TEXT_CHARS": _int("MAX_DOCUMENT_TEXT_CHARS", 2_000_000),
        "WEB_LOOP_LAG_MAX_SECONDS": _float("WEB_LOOP_LAG_MAX_SECONDS", 1.0),
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

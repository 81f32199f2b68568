"""How much an asker (a key while keys are on, else a client address) may ask: requests per
window (RATE_LIMIT, e.g. "60/minute", flask-limiter on Redis) and generated tokens per clock
hour (TOKENS_PER_HOUR). Both off by default; over either is a 429 with Retry-After."""
import math
import time

from flask import current_app, request
from flask_limiter import Limiter

from chatbot.api.errors import ApiError

from chatbot.api import auth
from chatbot.redis_keys import TOKENS


def asker():
    """Whose quota a request counts against."""
    return auth.key_name() or request.remote_addr or "local"


class TokenQuota:
    """Generated tokens per asker per clock hour, counted by the workers whatever the limit
    (a worker need not know it) and compared with TOKENS_PER_HOUR by the web."""

    def __init__(self, client, per_hour):
        self.redis, self.per_hour = client, per_hour

    def check(self, who):
        """Raise a 429 if `who` has used this hour's tokens up."""
        if self.per_hour <= 0:
            return
        hour, now = divmod(time.time(), 3600)
        used = int(self.redis.get(TOKENS.format(who, int(hour))) or 0)
        if used >= self.per_hour:
            raise ApiError(429, f"token limit exceeded: {self.per_hour} generated tokens per "
                                "hour (TOKENS_PER_HOUR)",
                           {"Retry-After": str(max(1, math.ceil(3600 - now)))})

    def tally(self, who, tokens):
        """What `who` generating `tokens` adds to its hour's count, as (key, amount, seconds
        kept), for the worker to add when it ends the request (chatbot.line); None if
        nothing."""
        if who and tokens:
            return TOKENS.format(who, int(time.time() // 3600)), int(tokens), 7200
        return None


def init_app(app):
    """After the API's own before_request (which identifies the key): hooks run in order."""
    rate = app.config["RATE_LIMIT"]
    app.extensions["rate_limiter"] = Limiter(
        asker, app=app, default_limits=[rate] if rate else [], storage_uri=app.config["REDIS_URL"],
        headers_enabled=True, default_limits_exempt_when=auth.is_open, enabled=bool(rate),
        key_prefix="chatbot-rate")
    app.extensions["tokens"] = TokenQuota(app.extensions["redis"], app.config["TOKENS_PER_HOUR"])


def tokens():
    return current_app.extensions["tokens"]

